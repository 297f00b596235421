// The call as the user experiences it: local media, the people in the room, chat, and staying
// connected. It survives reconnections: each attempt is a fresh Connection (new WebSocket, new
// `join`, new peer connection); local tracks and their mute states carry over to the next one.

import { Connection } from "./connection.js";
import { Emitter } from "./util.js";
import { openCamera, openMicrophone, openScreen } from "./media.js";

const STATS_INTERVAL_MS = 400;
const SPEAKING_THRESHOLD = 0.035; // inbound-rtp/media-source audioLevel (0..1, linear)
const SPEAKER_HOLD_MS = 1200;
const PC_DISCONNECTED_GRACE_MS = 8000;
const PC_CONNECT_TIMEOUT_MS = 20000;
const RECONNECT_DELAYS_MS = [250, 1000, 2000, 4000, 8000];
const MAX_CHAT = 500;

/** The /ws endpoint next to the page (also behind a reverse proxy with a path prefix). */
export function signallingUrl() {
  const url = new URL("ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.toString();
}

/** Join refusals that retrying will not fix. */
const FATAL_JOIN_ERRORS = new Set(["invalid-message", "unsupported-version", "room-full", "too-many-rooms"]);

/** Requests whose loss leaves the negotiation stuck: start over if the server drops one. */
/**
 * Publish the camera as three simulcast layers. Opt-in for now (`localStorage["plaza.simulcast"]
 * = "1"`): until the server estimates each subscriber's bandwidth, a publisher whose own
 * estimate starts low sends only its smallest layer for the first seconds of a call.
 */
const SIMULCAST = (() => {
  try {
    return localStorage.getItem("plaza.simulcast") === "1";
  } catch {
    return false;
  }
})();

const VITAL_REQUESTS = new Set(["answer", "publish", "unpublish"]);

export class Call extends Emitter {
  /**
   * @param {object} opts
   * @param {string} opts.room
   * @param {string} opts.name
   * @param {MediaStreamTrack|null} opts.microphone  open microphone track, or null
   * @param {MediaStreamTrack|null} opts.camera      open camera track, or null (camera off or none)
   * @param {boolean} opts.micMuted
   * @param {boolean} opts.cameraAvailable  a camera can be used (publish a slot even when off)
   * @param {string} [opts.cameraId] @param {string} [opts.microphoneId]
   */
  constructor({ room, name, microphone, camera, micMuted, cameraAvailable, cameraId, microphoneId, wsUrl }) {
    super();
    this.room = room;
    this.name = name;
    this.wsUrl = wsUrl ?? signallingUrl();
    this.local = {
      mic: { cid: "mic", kind: "audio", source: "microphone", track: microphone, muted: micMuted || !microphone, deviceId: microphoneId ?? null },
      cam: { cid: "cam", kind: "video", source: "camera", track: camera, muted: !camera, deviceId: cameraId ?? null, available: cameraAvailable || !!camera },
      screen: null, // { cid, kind: "video", source: "screen", track, muted: false }
    };
    if (microphone) microphone.enabled = !this.local.mic.muted;
    this.watchTrack(microphone);
    this.watchTrack(camera);
    this.screenCounter = 0;
    this.conn = null;
    this.state = "idle"; // idle | connecting | connected | reconnecting | failed | left
    this.stateDetail = "";
    this.mediaState = "new"; // the peer connection's connectionState
    this.selfId = null;
    this.participants = new Map(); // id -> { id, name, tracks: Map<trackId, {...}>, level, joinedAt }
    this.chat = [];
    this.activeSpeaker = null; // participant id, "self", or null
    this.levels = new Map(); // participant id or "self" -> smoothed audio level
    this.speakerSince = 0;
    this.totals = { offers: 0, answers: 0, connections: 0, reconnects: 0 };
    this.attempt = 0;
    this.reconnectTimer = null;
    this.reconnectAt = 0;
    this.statsTimer = null;
    this.pcTroubleSince = 0;
    this.firstAnswerAt = 0;
    this.rttMs = null; // signalling round trip (ping/pong)
    this.mediaRttMs = null; // media round trip (ICE candidate pair)
    this.onOnline = () => {
      if (this.state === "reconnecting") this.reconnectNow();
    };
    window.addEventListener("online", this.onOnline);
  }

  // ---- lifecycle ------------------------------------------------------------------------

  start() {
    this.connect();
    this.statsTimer = setInterval(() => this.poll().catch((err) => console.warn("plaza: stats", err)), STATS_INTERVAL_MS);
  }

  setState(state, detail = "") {
    if (this.state === state && this.stateDetail === detail) return;
    this.state = state;
    this.stateDetail = detail;
    this.emit("state", { state, detail });
    this.changed();
  }

  /** Cids requested on the connection: what a (re)join publishes. */
  publishRequests() {
    const list = [];
    const { mic, cam, screen } = this.local;
    if (mic.track) list.push({ cid: mic.cid, kind: "audio", source: "microphone", muted: mic.muted });
    if (cam.available) list.push({ cid: cam.cid, kind: "video", source: "camera", muted: cam.muted, simulcast: SIMULCAST });
    if (screen) list.push({ cid: screen.cid, kind: "video", source: "screen", muted: false });
    return list;
  }

  localTrackFor(cid) {
    const { mic, cam, screen } = this.local;
    if (cid === mic.cid) return mic.track;
    if (cid === cam.cid) return cam.muted ? null : cam.track;
    if (screen && cid === screen.cid) return screen.track;
    return null;
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const publish = this.publishRequests();
    const conn = new Connection({
      url: this.wsUrl,
      room: this.room,
      name: this.name,
      publish,
      localTrack: (cid) => this.localTrackFor(cid),
    });
    conn.requested = new Set(publish.map((p) => p.cid));
    conn.announcedMuted = new Map(publish.map((p) => [p.cid, p.muted]));
    this.conn = conn;
    this.totals.connections++;
    this.pcTroubleSince = 0;
    this.firstAnswerAt = 0;
    this.mediaEverConnected = false;
    this.mediaState = "new";
    this.mediaRttMs = null;
    if (this.totals.connections === 1) this.setState("connecting");
    else this.setState("reconnecting", this.stateDetail);

    conn.on("joined", (msg) => this.onJoined(conn, msg));
    conn.on("participant-joined", ({ participant }) => {
      this.addParticipant(participant);
      this.notice(`${participant.name} joined`, "join");
      this.changed();
    });
    conn.on("participant-left", ({ participant_id, reason }) => {
      const p = this.participants.get(participant_id);
      if (!p) return;
      this.participants.delete(participant_id);
      this.levels.delete(participant_id);
      if (this.activeSpeaker === participant_id) this.activeSpeaker = null;
      const how = reason === "left" ? "left" : reason === "timed-out" ? "lost connection" : "disconnected";
      this.notice(`${p.name} ${how}`, "leave");
      this.changed();
    });
    conn.on("track-published", ({ participant_id, track }) => {
      const p = this.participants.get(participant_id);
      if (!p) return;
      const existing = p.tracks.get(track.id);
      p.tracks.set(track.id, { ...track, mst: existing?.mst ?? null, mid: existing?.mid ?? null });
      if (track.source === "screen") this.notice(`${p.name} is presenting`, "screen");
      this.changed();
    });
    conn.on("track-unpublished", ({ participant_id, track_id }) => {
      this.participants.get(participant_id)?.tracks.delete(track_id);
      this.changed();
    });
    conn.on("track-muted", ({ participant_id, track_id, muted }) => {
      const track = this.participants.get(participant_id)?.tracks.get(track_id);
      if (track) track.muted = muted;
      this.changed();
    });
    conn.on("chat", (msg) => this.onChat(msg));
    conn.on("track", ({ binding, track }) => this.onRemoteTrack(binding, track));
    conn.on("offer-received", () => this.totals.offers++);
    conn.on("offer-applied", (bindings) => this.onOfferApplied(conn, bindings));
    conn.on("pc-state", (state) => this.onPcState(conn, state));
    conn.on("rtt", (rtt) => {
      this.rttMs = rtt;
      this.emit("rtt", rtt);
    });
    conn.on("server-error", (err) => this.onServerError(conn, err));
    conn.on("server-shutdown", () => {
      // The server is restarting: the session ends now; rejoin with a backoff.
      this.attempt = Math.max(this.attempt, 1);
      conn.close("the server is restarting");
    });
    conn.on("closed", ({ reason, quiet }) => {
      if (conn !== this.conn || quiet) return;
      this.onConnectionLost(reason);
    });
    conn.open();
  }

  onJoined(conn, msg) {
    this.selfId = msg.participant_id;
    this.participants.clear();
    this.levels.clear();
    this.activeSpeaker = null;
    for (const member of msg.members ?? []) this.addParticipant(member);
    if (this.totals.connections > 1) this.notice("Reconnected", "ok");
    this.setState("connected");
    this.emit("joined", msg);
    this.changed();
  }

  addParticipant(member) {
    const tracks = new Map();
    for (const t of member.tracks ?? []) tracks.set(t.id, { ...t, mst: null, mid: null });
    this.participants.set(member.id, { id: member.id, name: member.name, tracks, joinedAt: Date.now() });
  }

  onRemoteTrack(binding, mst) {
    let p = this.participants.get(binding.participant_id);
    if (!p) {
      // Cannot happen per the protocol's ordering guarantees; be forgiving anyway.
      p = { id: binding.participant_id, name: "Guest", tracks: new Map(), joinedAt: Date.now() };
      this.participants.set(p.id, p);
    }
    let track = p.tracks.get(binding.track_id);
    if (!track) {
      track = { id: binding.track_id, kind: binding.kind, source: binding.kind === "audio" ? "microphone" : "camera", muted: false };
      p.tracks.set(track.id, track);
    }
    track.mst = mst;
    track.mid = binding.mid;
    // A reused m-line hands the same MediaStreamTrack to the next participant: listen once.
    this.watchedRemote ??= new WeakSet();
    if (!this.watchedRemote.has(mst)) {
      this.watchedRemote.add(mst);
      mst.addEventListener("unmute", () => this.changed());
      mst.addEventListener("mute", () => this.changed());
    }
    this.changed();
  }

  onOfferApplied(conn, { send, recv }) {
    this.totals.answers++;
    if (!this.firstAnswerAt) this.firstAnswerAt = performance.now();
    // Media of tracks no longer bound has ended.
    const bound = new Set(recv.map((b) => b.track_id));
    for (const p of this.participants.values()) {
      for (const t of p.tracks.values()) {
        if (t.mst && !bound.has(t.id)) {
          t.mst = null;
          t.mid = null;
        }
      }
    }
    // Announce mute states decided before the track had an id.
    for (const b of send) {
      const local = this.localByCid(b.cid);
      if (!local) {
        // A screen share that was stopped before its offer arrived.
        if (b.cid.startsWith("screen")) {
          conn.send({ type: "unpublish", track_id: b.track_id });
          conn.requested.delete(b.cid);
        }
        continue;
      }
      if (conn.announcedMuted.get(b.cid) !== local.muted) {
        conn.mute(b.cid, local.muted);
        conn.announcedMuted.set(b.cid, local.muted);
      }
    }
    this.changed();
  }

  localByCid(cid) {
    const { mic, cam, screen } = this.local;
    if (cid === mic.cid) return mic;
    if (cid === cam.cid) return cam;
    if (screen && cid === screen.cid) return screen;
    return null;
  }

  onPcState(conn, state) {
    this.mediaState = state;
    if (state === "connected") {
      this.mediaEverConnected = true;
      this.attempt = 0;
      this.pcTroubleSince = 0;
    }
    if (state === "failed") conn.close("media connection failed");
    this.changed();
  }

  onServerError(conn, err) {
    if (!conn.joined) {
      // The join was refused.
      conn.close(err.message, { quiet: true });
      const fatal = FATAL_JOIN_ERRORS.has(err.code);
      const text =
        err.code === "room-full"
          ? "This room is full. Try again later, or pick another room."
          : err.code === "too-many-rooms"
            ? "The server cannot open more rooms right now. Try again later."
            : err.code === "shutting-down"
              ? "The server is restarting"
              : err.message;
      if (fatal) {
        this.stopTimers();
        this.setState("failed", text);
        this.emit("fatal", { code: err.code, message: text });
      } else {
        this.scheduleReconnect(text);
      }
      return;
    }
    if (err.code === "rate-limited" && VITAL_REQUESTS.has(err.request)) {
      conn.close("too many messages");
      return;
    }
    if (err.code === "invalid-sdp") {
      // Our answer was refused. The server may follow with a fresh offer; if it does not,
      // this negotiation is stuck: start over with a new connection.
      const offers = conn.stats.offers;
      setTimeout(() => {
        if (conn === this.conn && !conn.closed && conn.stats.offers === offers) conn.close("negotiation failed");
      }, 4000);
      return;
    }
    this.emit("server-error", err);
  }

  onConnectionLost(reason) {
    if (this.state === "left" || this.state === "failed") return;
    // A session that lasted a while was healthy: reconnect at once, not with the backoff of
    // earlier failures.
    const lost = this.conn;
    if (lost?.joinedAt && performance.now() - lost.joinedAt > 15_000) this.attempt = 0;
    this.participants.clear();
    this.levels.clear();
    this.activeSpeaker = null;
    this.emit("levels", { levels: this.levels, activeSpeaker: null });
    this.scheduleReconnect(reason);
  }

  scheduleReconnect(reason) {
    // With jitter, so that everyone in a room does not knock at the same moment after a
    // server restart.
    const base = RECONNECT_DELAYS_MS[Math.min(this.attempt, RECONNECT_DELAYS_MS.length - 1)];
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt++;
    this.totals.reconnects++;
    this.reconnectAt = Date.now() + delay;
    this.setState("reconnecting", reason);
    this.changed();
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.state !== "reconnecting" && this.state !== "connected") return;
    if (this.conn && !this.conn.closed) this.conn.close("reconnecting", { quiet: true });
    this.participants.clear();
    this.connect();
  }

  /** Leaves the call for good and releases the devices. */
  leave() {
    if (this.state === "left") return;
    this.stopTimers();
    this.conn?.leave();
    for (const local of [this.local.mic, this.local.cam, this.local.screen]) local?.track?.stop();
    this.participants.clear();
    this.setState("left");
  }

  stopTimers() {
    clearTimeout(this.reconnectTimer);
    clearInterval(this.statsTimer);
    window.removeEventListener("online", this.onOnline);
  }

  changed() {
    this.emit("change");
  }

  notice(text, kind = "info") {
    this.emit("notice", { text, kind, at: Date.now() });
  }

  // ---- stats: audio levels, active speaker, peer connection health ----------------------

  async poll() {
    const conn = this.conn;
    const pc = conn?.pc;
    if (!pc || conn.closed) return;
    // A peer connection closed from under us (pc.close() fires no event) or stuck.
    const st = pc.connectionState;
    const now = performance.now();
    if (st === "closed" || pc.signalingState === "closed") {
      conn.close("media connection closed");
      return;
    }
    if (st === "disconnected" || st === "failed") {
      if (!this.pcTroubleSince) this.pcTroubleSince = now;
      if (st === "failed" || now - this.pcTroubleSince > PC_DISCONNECTED_GRACE_MS) {
        conn.close("media connection lost");
        return;
      }
    } else {
      this.pcTroubleSince = 0;
    }
    if (st === "connected") this.mediaEverConnected = true;
    if (!this.mediaEverConnected && this.firstAnswerAt && now - this.firstAnswerAt > PC_CONNECT_TIMEOUT_MS) {
      conn.close("media connection could not be established");
      return;
    }
    if (this.mediaState !== st) {
      this.mediaState = st;
      this.changed();
    }

    const report = await pc.getStats();
    const raw = new Map();
    let pairId = null;
    for (const s of report.values()) if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    const pair = pairId ? report.get(pairId) : null;
    if (pair?.currentRoundTripTime !== undefined) this.mediaRttMs = pair.currentRoundTripTime * 1000;
    let midByTrackId = null; // for browsers whose inbound-rtp stats lack `mid`
    for (const s of report.values()) {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        let mid = s.mid;
        if (mid === undefined && s.trackIdentifier) {
          midByTrackId ??= new Map(pc.getTransceivers().map((t) => [t.receiver.track?.id, t.mid]));
          mid = midByTrackId.get(s.trackIdentifier);
        }
        const b = conn.recvByMid.get(mid);
        if (!b) continue;
        const track = this.participants.get(b.participant_id)?.tracks.get(b.track_id);
        const level = track?.muted ? 0 : s.audioLevel ?? 0;
        raw.set(b.participant_id, Math.max(raw.get(b.participant_id) ?? 0, level));
      } else if (s.type === "media-source" && s.kind === "audio") {
        raw.set("self", this.local.mic.muted ? 0 : s.audioLevel ?? 0);
      }
    }
    let loudest = null;
    let loudestLevel = SPEAKING_THRESHOLD;
    for (const [id, level] of raw) {
      const previous = this.levels.get(id) ?? 0;
      const smoothed = level > previous ? level : previous * 0.5 + level * 0.5;
      this.levels.set(id, smoothed);
      if (smoothed > loudestLevel) {
        loudest = id;
        loudestLevel = smoothed;
      }
    }
    const t = Date.now();
    if (loudest && loudest !== this.activeSpeaker) {
      const currentLevel = this.levels.get(this.activeSpeaker) ?? 0;
      // Switch when the current speaker went quiet, or someone is clearly louder.
      if (currentLevel < SPEAKING_THRESHOLD || loudestLevel > currentLevel * 1.5 || t - this.speakerSince > SPEAKER_HOLD_MS) {
        this.activeSpeaker = loudest;
        this.speakerSince = t;
      }
    } else if (loudest) {
      this.speakerSince = t;
    } else if (this.activeSpeaker && t - this.speakerSince > SPEAKER_HOLD_MS * 2) {
      this.activeSpeaker = null;
    }
    this.emit("levels", { levels: this.levels, activeSpeaker: this.activeSpeaker });
  }

  // ---- local controls -----------------------------------------------------------------

  /** A device that goes away (unplugged, taken by the system) ends its track: say so. */
  watchTrack(track) {
    track?.addEventListener("ended", () => {
      const { mic, cam } = this.local;
      if (this.state === "left") return;
      if (track === cam.track) {
        this.notice("Your camera stopped. Turn it on again, or pick another one in the settings.", "error");
        this.setCameraOff(true);
      } else if (track === mic.track) {
        this.notice("Your microphone stopped. Pick another one in the settings.", "error");
        this.setMicMuted(true);
      }
    });
  }

  setMicMuted(muted) {
    const mic = this.local.mic;
    if (!mic.track) return false;
    mic.muted = muted;
    mic.track.enabled = !muted; // really stop sending: silence
    this.announce(mic.cid, muted);
    this.changed();
    return true;
  }

  announce(cid, muted) {
    const conn = this.conn;
    if (!conn || conn.closed || !conn.requested.has(cid)) return;
    if (conn.trackIdFor(cid)) {
      conn.mute(cid, muted);
      conn.announcedMuted.set(cid, muted);
    } // else: announced when the offer binds the track (onOfferApplied)
  }

  /** Camera off releases the device (the light goes off); on opens it again. */
  async setCameraOff(off) {
    const cam = this.local.cam;
    if (off) {
      if (cam.muted) return true;
      cam.muted = true;
      this.announce(cam.cid, true);
      await this.conn?.replaceTrack(cam.cid, null).catch(() => {});
      cam.track?.stop();
      cam.track = null;
      this.changed();
      return true;
    }
    if (!cam.muted && cam.track) return true;
    const track = await openCamera(cam.deviceId).catch((err) =>
      cam.deviceId && err.reason === "missing" ? openCamera() : Promise.reject(err),
    );
    if (this.state === "left") {
      track.stop();
      return false;
    }
    cam.track = track;
    this.watchTrack(track);
    cam.muted = false;
    cam.available = true;
    cam.deviceId = track.getSettings().deviceId ?? cam.deviceId;
    const conn = this.conn;
    if (conn && !conn.closed && conn.joined) {
      if (conn.requested.has(cam.cid)) {
        await conn.replaceTrack(cam.cid, track);
        this.announce(cam.cid, false);
      } else {
        conn.publish([{ cid: cam.cid, kind: "video", source: "camera", muted: false, simulcast: SIMULCAST }]);
        conn.requested.add(cam.cid);
        conn.announcedMuted.set(cam.cid, false);
      }
    }
    this.changed();
    return true;
  }

  /** Switches camera without renegotiating: RTCRtpSender.replaceTrack on the same m-line. */
  async switchCamera(deviceId) {
    const cam = this.local.cam;
    cam.deviceId = deviceId;
    if (cam.muted || !cam.track) {
      this.changed();
      return;
    }
    const old = cam.track;
    let track;
    try {
      track = await openCamera(deviceId);
    } catch (err) {
      if (err.reason !== "busy") throw err;
      // Some devices (phones) cannot open two cameras at once.
      old.stop();
      track = await openCamera(deviceId);
    }
    cam.track = track;
    this.watchTrack(track);
    await this.conn?.replaceTrack(cam.cid, track);
    if (old !== track) old.stop();
    this.changed();
  }

  async switchMicrophone(deviceId) {
    const mic = this.local.mic;
    mic.deviceId = deviceId;
    const old = mic.track;
    const track = await openMicrophone(deviceId);
    track.enabled = !mic.muted;
    mic.track = track;
    this.watchTrack(track);
    if (old) {
      await this.conn?.replaceTrack(mic.cid, track);
      old.stop();
    } else {
      // The first microphone of a listen-only participant: publish it.
      const conn = this.conn;
      if (conn && conn.joined && !conn.closed) {
        conn.publish([{ cid: mic.cid, kind: "audio", source: "microphone", muted: mic.muted }]);
        conn.requested.add(mic.cid);
        conn.announcedMuted.set(mic.cid, mic.muted);
      }
    }
    this.changed();
  }

  async startScreenShare() {
    if (this.local.screen) return;
    const track = await openScreen();
    if (this.state === "left") {
      track.stop();
      return;
    }
    const cid = `screen-${++this.screenCounter}`;
    this.local.screen = { cid, kind: "video", source: "screen", track, muted: false };
    track.addEventListener("ended", () => this.stopScreenShare());
    const conn = this.conn;
    if (conn && conn.joined && !conn.closed) {
      conn.publish([{ cid, kind: "video", source: "screen", muted: false }]);
      conn.requested.add(cid);
    }
    this.changed();
  }

  stopScreenShare() {
    const screen = this.local.screen;
    if (!screen) return;
    this.local.screen = null;
    screen.track.stop();
    const conn = this.conn;
    if (conn && !conn.closed && conn.requested.has(screen.cid) && conn.trackIdFor(screen.cid)) {
      conn.unpublish(screen.cid);
      conn.requested.delete(screen.cid);
    } // else: unpublished when its offer arrives (onOfferApplied)
    this.changed();
  }

  // ---- chat ---------------------------------------------------------------------------

  /**
   * Tells the server how a received video track is shown (adaptive stream): hidden tiles get
   * no video, visible ones the smallest layer that is sharp at `height` device pixels.
   * Sent only when it changes.
   */
  setTrackView(trackId, visible, height) {
    const conn = this.conn;
    if (!conn || !trackId) return;
    conn.views ??= new Map();
    const rounded = visible ? Math.max(1, Math.round(height / 10) * 10) : 0;
    if (conn.views.get(trackId) === rounded) return;
    conn.views.set(trackId, rounded);
    conn.send({ type: "track-view", track_id: trackId, visible, ...(visible ? { height: rounded } : {}) });
  }

  sendChat(text) {
    if (!this.conn?.joined || this.conn.closed) return false;
    return this.conn.chat(text);
  }

  onChat(msg) {
    const entry = { from: msg.from, name: msg.name, text: msg.text, ts: msg.ts, private: !!msg.private, self: msg.from === this.selfId };
    this.chat.push(entry);
    if (this.chat.length > MAX_CHAT) this.chat.shift();
    this.emit("chat", entry);
  }

  // ---- for tests and diagnostics --------------------------------------------------------

  get ws() {
    return this.conn?.ws ?? null;
  }

  get pc() {
    return this.conn?.pc ?? null;
  }
}
