// The in-call screen: tiles, controls, people, chat, connection state, settings, shortcuts.
// It renders from the Call's model (re-rendered on every "change", at most once a frame), keeping
// one DOM tile per key so that video elements are not recreated.

import { $, h, formatTime, hueFor, initials } from "./util.js";
import { icon, logo } from "./icons.js";
import { toast } from "./toasts.js";
import { canChooseSpeaker, canShareScreen, listDevices } from "./media.js";
import { fillSelect } from "./prejoin.js";
import { prefs } from "./prefs.js";

const GAP = 10;

/**
 * The tile size that shows `n` tiles of the given aspect ratio as large as possible in a box.
 * @returns {{cols: number, width: number, height: number}}
 */
export function bestGrid(n, boxWidth, boxHeight, aspect = 16 / 9, gap = GAP) {
  let best = { cols: 1, width: 0, height: 0 };
  if (n <= 0 || boxWidth <= 0 || boxHeight <= 0) return best;
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    let width = (boxWidth - gap * (cols - 1)) / cols;
    let height = width / aspect;
    if (height * rows + gap * (rows - 1) > boxHeight) {
      height = (boxHeight - gap * (rows - 1)) / rows;
      width = height * aspect;
    }
    if (width * height > best.width * best.height) best = { cols, width: Math.floor(width), height: Math.floor(height) };
  }
  return best;
}

export class CallView {
  constructor({ onLeave }) {
    this.onLeave = onLeave;
    this.root = $("#call");
    this.grid = $("#grid");
    this.screens = $("#screens");
    this.stage = $("#stage");
    this.panel = $("#panel");
    this.chatLog = $("#chat-log");
    this.chatInput = $("#chat-input");
    this.audioSink = $("#audio-sink");
    this.tiles = new Map(); // key -> tile element
    this.audios = new Map(); // remote track id -> <audio>
    this.call = null;
    this.unsubscribe = [];
    this.renderQueued = false;
    this.panelTab = null; // "people" | "chat" | null
    this.unread = 0;
    this.audioBlocked = false;
    this.lastChatFrom = null;
    this.lastChatAt = 0;
    // Adaptive stream: the server sends each remote video at the size its tile is shown, and
    // nothing to tiles out of view.
    this.tileVisible = new WeakMap(); // tile -> in view (once the observer has said)
    this.viewObserver = new IntersectionObserver((entries) => {
      for (const e of entries) {
        this.tileVisible.set(e.target, e.isIntersecting);
        this.reportView(e.target);
      }
    });
    this.sizeObserver = new ResizeObserver((entries) => {
      for (const e of entries) this.reportView(e.target);
    });

    for (const el of document.querySelectorAll("#call [data-logo]")) el.innerHTML = logo(24);
    $("#btn-mic").addEventListener("click", () => this.toggleMic());
    $("#btn-cam").addEventListener("click", () => this.toggleCamera());
    $("#btn-screen").addEventListener("click", () => this.toggleScreen());
    $("#btn-leave").addEventListener("click", () => this.onLeave());
    $("#btn-people").addEventListener("click", () => this.togglePanel("people"));
    $("#btn-chat").addEventListener("click", () => this.togglePanel("chat"));
    $("#tab-people").addEventListener("click", () => this.openPanel("people"));
    $("#tab-chat").addEventListener("click", () => this.openPanel("chat"));
    $("#panel-close").addEventListener("click", () => this.closePanel());
    $("#btn-settings").addEventListener("click", () => this.openSettings());
    $("#btn-settings-2").addEventListener("click", () => this.openSettings());
    $("#copy-link").addEventListener("click", () => this.copyLink());
    $("#invite-copy").addEventListener("click", () => this.copyLink());
    $("#chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendChat();
    });
    this.chatInput.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.sendChat();
      }
    });
    this.chatInput.addEventListener("input", () => this.autosizeChat());
    $("#set-camera").addEventListener("change", (e) => this.switchCamera(e.target.value));
    $("#set-mic").addEventListener("change", (e) => this.switchMic(e.target.value));
    $("#set-speaker").addEventListener("change", (e) => this.setSpeaker(e.target.value));
    this.onKey = (event) => this.shortcut(event);
    this.resizeObserver = new ResizeObserver(() => this.layout());
    this.resizeObserver.observe(this.stage);
    this.resizeObserver.observe(this.grid);
    this.resizeObserver.observe(this.screens);
    this.unlockAudio = () => this.playAllAudio();
  }

  // ---- lifecycle ------------------------------------------------------------------------

  show(call) {
    this.call = call;
    this.root.hidden = false;
    document.title = `${call.room} · Plaza`;
    $("#call-room").textContent = call.room;
    $("#controls-room").textContent = call.room;
    this.chatLog.replaceChildren();
    this.lastChatFrom = null;
    this.unread = 0;
    const on = (type, fn) => this.unsubscribe.push(call.on(type, fn));
    on("change", () => this.scheduleRender());
    on("state", () => this.scheduleRender());
    on("levels", ({ levels, activeSpeaker }) => this.showLevels(levels, activeSpeaker));
    on("chat", (entry) => this.addChat(entry));
    on("rtt", () => this.renderConnection());
    on("notice", ({ text, kind }) => {
      toast(text, { kind });
      if (kind === "join" || kind === "leave") this.addSystemLine(text);
    });
    on("server-error", (err) => this.showServerError(err));
    document.addEventListener("keydown", this.onKey);
    document.addEventListener("pointerdown", this.unlockAudio);
    this.clockTimer = setInterval(() => this.renderClock(), 1000);
    this.renderClock();
    this.render();
  }

  hide() {
    for (const off of this.unsubscribe.splice(0)) off();
    document.removeEventListener("keydown", this.onKey);
    document.removeEventListener("pointerdown", this.unlockAudio);
    clearInterval(this.clockTimer);
    for (const tile of this.tiles.values()) tile.remove();
    this.tiles.clear();
    for (const audio of this.audios.values()) {
      audio.srcObject = null;
      audio.remove();
    }
    this.audios.clear();
    this.closePanel();
    $("#settings").open && $("#settings").close();
    $("#call-banner").hidden = true;
    this.root.hidden = true;
    this.call = null;
  }

  scheduleRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    const run = () => {
      this.renderQueued = false;
      if (this.call) this.render();
    };
    // Animation frames stop in background tabs, but new participants must still be heard.
    if (document.hidden) setTimeout(run, 50);
    else requestAnimationFrame(run);
  }

  // ---- rendering ------------------------------------------------------------------------

  /** What to show: one descriptor per tile. */
  describeTiles() {
    const call = this.call;
    const { mic, cam, screen } = call.local;
    const cameras = [];
    const screens = [];
    cameras.push({
      key: "self",
      pid: call.selfId ?? "self",
      self: true,
      name: call.name,
      label: `${call.name} (You)`,
      video: !cam.muted ? cam.track : null,
      micMuted: !mic.track || mic.muted,
      noMic: !mic.track,
      mirror: true,
      speakerKey: "self",
    });
    if (screen) {
      screens.push({ key: "self-screen", pid: call.selfId ?? "self", self: true, screen: true, name: call.name, label: "Your screen", video: screen.track, micMuted: false });
    }
    const people = [...call.participants.values()].sort((a, b) => a.joinedAt - b.joinedAt);
    for (const p of people) {
      const tracks = [...p.tracks.values()];
      const audio = tracks.find((t) => t.kind === "audio" && t.source !== "screen-audio");
      const camera = tracks.find((t) => t.kind === "video" && t.source === "camera") ?? tracks.find((t) => t.kind === "video" && t.source !== "screen");
      cameras.push({
        key: p.id,
        pid: p.id,
        name: p.name,
        label: p.name,
        video: camera && !camera.muted && camera.mst ? camera.mst : null,
        camTrackId: camera?.id,
        micMuted: !audio || audio.muted,
        noMic: !audio,
        speakerKey: p.id,
      });
      for (const t of tracks) {
        if (t.kind === "video" && t.source === "screen") {
          screens.push({ key: `screen:${t.id}`, pid: p.id, screen: true, name: p.name, label: `${p.name} is presenting`, video: t.mst && !t.muted ? t.mst : null, trackId: t.id, micMuted: false });
        }
      }
    }
    return { cameras, screens };
  }

  render() {
    const call = this.call;
    if (!call) return;
    const { cameras, screens } = this.describeTiles();
    const keep = new Set();
    for (const d of cameras) keep.add(this.updateTile(d, this.grid).dataset.key);
    for (const d of screens) keep.add(this.updateTile(d, this.screens).dataset.key);
    for (const [key, tile] of this.tiles) {
      if (!keep.has(key)) {
        const video = tile.querySelector("video");
        video.srcObject = null;
        this.viewObserver.unobserve(tile);
        this.sizeObserver.unobserve(tile);
        tile.remove();
        this.tiles.delete(key);
      }
    }
    // Keep DOM order = descriptor order.
    cameras.forEach((d, i) => {
      const tile = this.tiles.get(d.key);
      if (this.grid.children[i] !== tile) this.grid.insertBefore(tile, this.grid.children[i] ?? null);
    });
    this.stage.classList.toggle("presenting", screens.length > 0);
    const alone = call.participants.size === 0 && call.state === "connected";
    this.root.classList.toggle("alone", alone);
    $("#alone-card").hidden = !alone;
    $("#invite-link").textContent = this.inviteLink();
    this.renderAudio();
    this.renderControls();
    this.renderConnection();
    this.renderPeople(cameras, screens);
    this.layout();
  }

  updateTile(d, container) {
    let tile = this.tiles.get(d.key);
    if (!tile || tile.parentElement !== container) {
      tile?.remove();
      tile = this.createTile(d);
      container.append(tile);
      this.tiles.set(d.key, tile);
    }
    const video = tile.querySelector("video");
    if (tile._track !== d.video) {
      tile._track = d.video;
      tile.classList.remove("has-frames");
      video.srcObject = d.video ? new MediaStream([d.video]) : null;
      if (d.video) video.play().catch(() => {});
    }
    tile.dataset.pid = d.pid;
    const viewTrack = d.self ? null : (d.camTrackId ?? d.trackId ?? null);
    if (tile._viewTrack !== viewTrack) {
      tile._viewTrack = viewTrack;
      this.reportView(tile);
    }
    tile.classList.toggle("cam-off", !d.video);
    tile.classList.toggle("is-muted", !!d.micMuted);
    tile.classList.toggle("no-mic", !!d.noMic);
    tile.classList.toggle("mirror", !!d.mirror);
    tile.querySelector(".tile-name").textContent = d.label;
    tile.title = d.label;
    const avatar = tile.querySelector(".avatar");
    avatar.textContent = initials(d.name);
    avatar.style.setProperty("--hue", hueFor(d.name));
    return tile;
  }

  createTile(d) {
    const video = h("video", { autoplay: true, playsInline: true, muted: true });
    const tile = h(
      "div.tile",
      { dataset: { key: d.key, kind: d.screen ? "screen" : "camera" } },
      video,
      h("div.placeholder", {}, h("div.avatar")),
      h(
        "div.tile-info",
        {},
        h("span.mic-indicator", { title: "Microphone muted", "aria-label": "Microphone muted", html: icon("micOff", 15) }),
        h("span.tile-name"),
      ),
      h("div.level-bars", { "aria-hidden": "true" }, h("i"), h("i"), h("i")),
    );
    if (d.self) tile.classList.add("self");
    if (d.screen) {
      tile.classList.add("screen");
      if (d.self) {
        tile.append(
          h(
            "div.presenting-note",
            {},
            h("span", {}, "You are presenting to everyone"),
            h("button.btn.small.danger", { type: "button", onclick: () => this.call?.stopScreenShare() }, "Stop presenting"),
          ),
        );
      }
    }
    const framesArrived = () => {
      if (video.videoWidth > 0) tile.classList.add("has-frames");
    };
    video.addEventListener("loadeddata", framesArrived);
    video.addEventListener("resize", framesArrived);
    video.addEventListener("playing", framesArrived);
    tile.addEventListener("dblclick", () => this.toggleFullscreen(tile));
    if (!d.self) {
      this.viewObserver.observe(tile);
      this.sizeObserver.observe(tile);
    }
    return tile;
  }

  /** Tells the server how this tile's video is shown (see Call.setTrackView). */
  reportView(tile) {
    if (!tile._viewTrack || !this.call || !this.tileVisible.has(tile)) return;
    const visible = this.tileVisible.get(tile) && tile.isConnected;
    const height = tile.clientHeight * (window.devicePixelRatio || 1);
    this.call.setTrackView(tile._viewTrack, visible, height);
  }

  toggleFullscreen(tile) {
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    else tile.requestFullscreen?.().catch(() => {});
  }

  layout() {
    const presenting = this.stage.classList.contains("presenting");
    const cams = this.grid.children.length;
    if (presenting) {
      const narrow = this.stage.clientWidth < 720 || this.stage.clientHeight > this.stage.clientWidth;
      this.stage.classList.toggle("strip-bottom", narrow);
      const shots = this.screens.children.length;
      if (narrow) {
        // Portrait: the shared screen as wide as the stage, the people below in what is left.
        const stageW = this.stage.clientWidth;
        const stageH = this.stage.clientHeight;
        const natural = Math.round(((stageW * 9) / 16) * shots + GAP * (shots - 1));
        this.screens.style.flex = `0 0 ${Math.min(Math.round(stageH * 0.62), natural)}px`;
      } else {
        this.screens.style.flex = "";
      }
      const s = bestGrid(shots, this.screens.clientWidth, this.screens.clientHeight, 16 / 9);
      this.screens.style.setProperty("--tile-w", `${s.width}px`);
      this.screens.style.setProperty("--tile-h", `${s.height}px`);
    } else {
      this.stage.classList.remove("strip-bottom");
      this.screens.style.flex = "";
    }
    const width = this.grid.clientWidth;
    const height = this.grid.clientHeight;
    const aspect = presenting ? 16 / 9 : width < 520 && cams <= 2 ? 4 / 3 : 16 / 9;
    const g = bestGrid(cams, width, height, aspect);
    this.grid.style.setProperty("--tile-w", `${g.width}px`);
    this.grid.style.setProperty("--tile-h", `${g.height}px`);
    this.grid.dataset.count = String(cams);
  }

  showLevels(levels, activeSpeaker) {
    for (const [key, tile] of this.tiles) {
      if (tile.dataset.kind === "screen") continue;
      const speakerKey = key === "self" ? "self" : key;
      const level = levels.get(speakerKey) ?? 0;
      tile.style.setProperty("--level", Math.min(1, level * 4).toFixed(2));
      tile.classList.toggle("talking", level > 0.035 && !tile.classList.contains("is-muted"));
      tile.classList.toggle("speaking", activeSpeaker === speakerKey && this.call.participants.size > 0);
    }
    if (!this.lastConnRender || performance.now() - this.lastConnRender > 2000) {
      this.lastConnRender = performance.now();
      this.renderConnection();
    }
    const selfLevel = levels.get("self") ?? 0;
    $("#btn-mic").style.setProperty("--level", Math.min(1, selfLevel * 4).toFixed(2));
  }

  renderAudio() {
    const wanted = new Map();
    for (const p of this.call.participants.values()) {
      for (const t of p.tracks.values()) if (t.kind === "audio" && t.mst) wanted.set(t.id, t.mst);
    }
    for (const [id, audio] of this.audios) {
      if (wanted.get(id) !== audio._track) {
        audio.srcObject = null;
        audio.remove();
        this.audios.delete(id);
      }
    }
    const speakerId = prefs.get("speakerId");
    for (const [id, mst] of wanted) {
      if (this.audios.has(id)) continue;
      const audio = h("audio", { autoplay: true });
      audio._track = mst;
      audio.dataset.trackId = id;
      audio.srcObject = new MediaStream([mst]);
      if (speakerId && canChooseSpeaker()) audio.setSinkId(speakerId).catch(() => {});
      this.audioSink.append(audio);
      this.audios.set(id, audio);
      audio.play().catch((err) => {
        if (err?.name === "NotAllowedError") this.setAudioBlocked(true);
      });
    }
  }

  playAllAudio() {
    if (!this.audioBlocked) return;
    let pending = 0;
    for (const audio of this.audios.values()) {
      pending++;
      audio.play().then(
        () => {
          if (--pending === 0) this.setAudioBlocked(false);
        },
        () => {},
      );
    }
    if (pending === 0) this.setAudioBlocked(false);
  }

  setAudioBlocked(blocked) {
    this.audioBlocked = blocked;
    this.renderConnection();
  }

  renderControls() {
    const { mic, cam, screen } = this.call.local;
    const micBtn = $("#btn-mic");
    const micOn = !!mic.track && !mic.muted;
    micBtn.innerHTML = icon(micOn ? "mic" : "micOff");
    micBtn.classList.toggle("off", !micOn);
    micBtn.disabled = !mic.track && this.call.state === "left";
    micBtn.title = mic.track ? (mic.muted ? "Unmute (M)" : "Mute (M)") : "No microphone: click to try again";
    micBtn.setAttribute("aria-label", micBtn.title);
    micBtn.setAttribute("aria-pressed", String(!micOn));

    const camBtn = $("#btn-cam");
    const camOn = !cam.muted && !!cam.track;
    camBtn.innerHTML = icon(camOn ? "cam" : "camOff");
    camBtn.classList.toggle("off", !camOn);
    camBtn.title = camOn ? "Turn camera off (V)" : "Turn camera on (V)";
    camBtn.setAttribute("aria-label", camBtn.title);
    camBtn.setAttribute("aria-pressed", String(!camOn));

    const screenBtn = $("#btn-screen");
    screenBtn.innerHTML = icon(screen ? "screenStop" : "screen");
    screenBtn.classList.toggle("active", !!screen);
    screenBtn.hidden = !canShareScreen();
    screenBtn.title = screen ? "Stop presenting" : "Present your screen";
    screenBtn.setAttribute("aria-label", screenBtn.title);
    screenBtn.setAttribute("aria-pressed", String(!!screen));

    const n = this.call.participants.size + 1;
    $("#people-badge").textContent = String(n);
    $("#people-count").textContent = String(n);
    const chatBadge = $("#chat-badge");
    chatBadge.hidden = this.unread === 0;
    chatBadge.textContent = this.unread > 9 ? "9+" : String(this.unread);
    $("#btn-people").classList.toggle("active", this.panelTab === "people");
    $("#btn-chat").classList.toggle("active", this.panelTab === "chat");
  }

  renderConnection() {
    const call = this.call;
    if (!call) return;
    const box = $("#conn-state");
    let state;
    let text;
    if (call.state === "reconnecting") {
      state = "reconnecting";
      text = "Reconnecting…";
    } else if (call.state === "connecting") {
      state = "connecting";
      text = "Connecting…";
    } else if (call.state === "connected") {
      const media = call.mediaState;
      if (media === "disconnected" || media === "failed") {
        state = "unstable";
        text = "Connection unstable";
      } else if (media === "connected" || (media === "new" && !call.firstAnswerAt)) {
        state = "connected";
        const rtt = call.mediaRttMs ?? call.rttMs;
        text = rtt !== null ? `Connected · ${Math.max(1, Math.round(rtt))} ms` : "Connected";
      } else {
        state = "connecting";
        text = "Connecting media…";
      }
    } else {
      state = call.state;
      text = call.state === "left" ? "Left" : "Not connected";
    }
    if (box.dataset.state !== state || box.lastChild.textContent !== text) {
      box.dataset.state = state;
      box.querySelector(".text").textContent = text;
      box.title = call.stateDetail ? `${text} (${call.stateDetail})` : text;
    }

    const banner = $("#call-banner");
    const bannerText = banner.querySelector(".banner-text");
    const bannerBtn = banner.querySelector("button");
    if (call.state === "reconnecting") {
      banner.hidden = false;
      banner.dataset.kind = "warn";
      // (navigator.onLine is not trusted: it says "offline" on a machine whose only network
      // is loopback, where a local server is perfectly reachable.)
      const attempt = call.attempt > 1 ? ` (attempt ${call.attempt})` : "";
      bannerText.textContent = `Connection lost: ${call.stateDetail || "reconnecting"}. Rejoining the call…${attempt}`;
      bannerBtn.textContent = "Retry now";
      bannerBtn.onclick = () => call.reconnectNow();
      bannerBtn.hidden = false;
    } else if (this.audioBlocked) {
      banner.hidden = false;
      banner.dataset.kind = "info";
      bannerText.textContent = "Your browser blocked the sound of this call.";
      bannerBtn.textContent = "Turn on sound";
      bannerBtn.onclick = () => this.playAllAudio();
      bannerBtn.hidden = false;
    } else {
      banner.hidden = true;
    }
  }

  renderPeople(cameras, screens) {
    const presenting = new Set(screens.map((s) => s.pid));
    const items = cameras.map((d) =>
      h(
        "li.person",
        { dataset: { pid: d.pid } },
        h("span.avatar.small", { style: { "--hue": hueFor(d.name) } }, initials(d.name)),
        h("span.person-name", {}, d.name, d.self ? h("span.you", {}, " (You)") : null),
        presenting.has(d.pid) ? h("span.person-icon.on", { title: "Presenting", html: icon("screen", 16) }) : null,
        h("span.person-icon", { class: d.video ? "person-icon" : "person-icon off", title: d.video ? "Camera on" : "Camera off", html: icon(d.video ? "cam" : "camOff", 16) }),
        h("span.person-icon", { class: d.micMuted ? "person-icon off" : "person-icon", title: d.micMuted ? "Muted" : "Microphone on", html: icon(d.micMuted ? "micOff" : "mic", 16) }),
      ),
    );
    const list = $("#people-list");
    list.replaceChildren(...items);
  }

  renderClock() {
    $("#clock").textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  /** Errors the server reports during the call (the session goes on). */
  showServerError(err) {
    let text;
    switch (err.code) {
      case "invalid-candidate":
      case "no-offer-pending":
        return; // harmless for the user; logged by the connection
      case "rate-limited":
        text = "You are doing that too fast. Wait a moment and try again.";
        break;
      case "unknown-participant":
        text = "That person is no longer in the call.";
        break;
      case "too-many-tracks":
        text = "You cannot share more at the same time.";
        break;
      default:
        text = `${err.message} (${err.code})`;
    }
    toast(text, { kind: "error", timeout: 6000 });
  }

  // ---- controls -------------------------------------------------------------------------

  async toggleMic() {
    const call = this.call;
    if (!call) return;
    const mic = call.local.mic;
    if (!mic.track) {
      try {
        await call.switchMicrophone(prefs.get("microphoneId") || undefined);
      } catch (err) {
        toast(err.message, { kind: "error", timeout: 7000 });
      }
      return;
    }
    call.setMicMuted(!mic.muted);
  }

  async toggleCamera() {
    const call = this.call;
    if (!call || this.cameraBusy) return;
    this.cameraBusy = true;
    try {
      await call.setCameraOff(!call.local.cam.muted);
    } catch (err) {
      toast(err.message, { kind: "error", timeout: 7000 });
    } finally {
      this.cameraBusy = false;
    }
  }

  async toggleScreen() {
    const call = this.call;
    if (!call) return;
    if (call.local.screen) {
      call.stopScreenShare();
      return;
    }
    try {
      await call.startScreenShare();
    } catch (err) {
      if (err.reason !== "denied") toast(err.message, { kind: "error", timeout: 6000 });
    }
  }

  shortcut(event) {
    if (event.key === "Escape" && this.panelTab && !$("#settings").open) {
      this.closePanel();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    if (target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
    if ($("#settings").open) return;
    switch (event.key.toLowerCase()) {
      case "m":
        this.toggleMic();
        break;
      case "v":
        this.toggleCamera();
        break;
      case "c":
        this.togglePanel("chat");
        break;
      case "p":
        this.togglePanel("people");
        break;
      default:
        return;
    }
    event.preventDefault();
  }

  inviteLink() {
    const url = new URL(location.href);
    url.search = "";
    url.hash = "";
    url.searchParams.set("room", this.call.room);
    return url.toString();
  }

  async copyLink() {
    const link = this.inviteLink();
    try {
      await navigator.clipboard.writeText(link);
      toast("Invitation link copied", { kind: "ok" });
    } catch {
      toast(`Share this link: ${link}`, { kind: "info", timeout: 10000 });
    }
  }

  // ---- side panel: people and chat ----------------------------------------------------

  togglePanel(tab) {
    if (this.panelTab === tab) this.closePanel();
    else this.openPanel(tab);
  }

  openPanel(tab) {
    this.panelTab = tab;
    this.panel.hidden = false;
    this.panel.dataset.tab = tab;
    $("#tab-people").setAttribute("aria-selected", String(tab === "people"));
    $("#tab-chat").setAttribute("aria-selected", String(tab === "chat"));
    $("#people-pane").hidden = tab !== "people";
    $("#chat-pane").hidden = tab !== "chat";
    this.root.classList.add("panel-open");
    if (tab === "chat") {
      this.unread = 0;
      for (const t of document.querySelectorAll('#toasts .toast[data-kind="chat"]')) t.remove();
      this.chatLog.scrollTop = this.chatLog.scrollHeight;
      this.chatInput.focus();
    }
    if (this.call) this.renderControls();
    this.layout();
  }

  closePanel() {
    this.panelTab = null;
    this.panel.hidden = true;
    this.root.classList.remove("panel-open");
    if (this.call) this.renderControls();
    this.layout();
  }

  sendChat() {
    const text = this.chatInput.value;
    if (!text.trim()) return;
    if ([...text].length > 4000) {
      toast("Messages can have at most 4000 characters.", { kind: "error" });
      return;
    }
    if (!this.call?.sendChat(text)) {
      toast("Not connected: the message was not sent.", { kind: "error" });
      return;
    }
    this.chatInput.value = "";
    this.autosizeChat();
  }

  autosizeChat() {
    const input = this.chatInput;
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 140)}px`;
  }

  addChat(entry) {
    const atBottom = this.chatLog.scrollHeight - this.chatLog.scrollTop - this.chatLog.clientHeight < 40;
    const grouped = this.lastChatFrom === entry.from && entry.ts - this.lastChatAt < 120_000;
    const item = h(
      "li.chat-msg",
      { dataset: { from: entry.from }, class: `chat-msg${entry.self ? " own" : ""}${grouped ? " grouped" : ""}${entry.private ? " private" : ""}` },
      grouped
        ? null
        : h(
            "div.chat-head",
            {},
            h("span.chat-name", {}, entry.self ? "You" : entry.name),
            entry.private ? h("span.chat-private", {}, "privately") : null,
            h("time.chat-time", { datetime: new Date(entry.ts).toISOString() }, formatTime(entry.ts)),
          ),
      h("div.chat-text", {}, entry.text),
    );
    item.dataset.name = entry.name;
    this.chatLog.append(item);
    $("#chat-empty").hidden = true;
    this.lastChatFrom = entry.from;
    this.lastChatAt = entry.ts;
    if (atBottom || entry.self) this.chatLog.scrollTop = this.chatLog.scrollHeight;
    if (this.panelTab !== "chat" && !entry.self) {
      this.unread++;
      this.renderControls();
      toast(`${entry.name}: ${entry.text.length > 80 ? `${entry.text.slice(0, 80)}…` : entry.text}`, {
        kind: "chat",
        timeout: 5000,
        onclick: () => this.openPanel("chat"),
      });
    }
  }

  addSystemLine(text) {
    this.chatLog.append(h("li.chat-system", {}, `${text} · ${formatTime(Date.now())}`));
    this.lastChatFrom = null;
    this.chatLog.scrollTop = this.chatLog.scrollHeight;
  }

  // ---- settings -----------------------------------------------------------------------

  async openSettings() {
    const dialog = $("#settings");
    const devices = await listDevices();
    const { mic, cam } = this.call.local;
    fillSelect($("#set-camera"), devices.videoinput, cam.track?.getSettings().deviceId ?? cam.deviceId, "No camera found");
    fillSelect($("#set-mic"), devices.audioinput, mic.track?.getSettings().deviceId ?? mic.deviceId, "No microphone found");
    const speakers = canChooseSpeaker() && devices.audiooutput.length > 0;
    $("#set-speaker-field").hidden = !speakers;
    if (speakers) fillSelect($("#set-speaker"), devices.audiooutput, prefs.get("speakerId"), "Default");
    if (!dialog.open) dialog.showModal();
  }

  async switchCamera(deviceId) {
    prefs.set("cameraId", deviceId);
    try {
      await this.call.switchCamera(deviceId);
    } catch (err) {
      toast(err.message, { kind: "error", timeout: 7000 });
    }
  }

  async switchMic(deviceId) {
    prefs.set("microphoneId", deviceId);
    try {
      await this.call.switchMicrophone(deviceId);
    } catch (err) {
      toast(err.message, { kind: "error", timeout: 7000 });
    }
  }

  setSpeaker(deviceId) {
    prefs.set("speakerId", deviceId);
    for (const audio of this.audios.values()) audio.setSinkId?.(deviceId).catch(() => {});
  }
}
