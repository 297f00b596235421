// Pre-join: camera preview, microphone level, device choice, and joining with either off.

import { $, h, initials, hueFor } from "./util.js";
import { icon } from "./icons.js";
import { LevelMeter, canChooseSpeaker, listDevices, openBoth, openCamera, openMicrophone } from "./media.js";
import { prefs } from "./prefs.js";

export class PrejoinView {
  constructor({ onJoin, onBack }) {
    this.onJoin = onJoin;
    this.onBack = onBack;
    this.root = $("#prejoin");
    this.video = $("#preview-video");
    this.preview = $("#preview");
    this.camBtn = $("#pre-cam");
    this.micBtn = $("#pre-mic");
    this.joinBtn = $("#join-btn");
    this.cameraSelect = $("#camera-select");
    this.micSelect = $("#mic-select");
    this.speakerSelect = $("#speaker-select");
    this.meterBars = [...$("#mic-meter").children];
    this.camera = null;
    this.microphone = null;
    this.cameraOff = false;
    this.micMuted = false;
    this.cameraProblem = null;
    this.microphoneProblem = null;
    this.devices = { videoinput: [], audioinput: [], audiooutput: [] };
    this.meter = null;
    this.busy = false;
    this.active = false;

    this.camBtn.addEventListener("click", () => this.toggleCamera());
    this.micBtn.addEventListener("click", () => this.toggleMic());
    this.joinBtn.addEventListener("click", () => this.join());
    $("#back-btn").addEventListener("click", () => {
      this.release();
      this.onBack();
    });
    this.cameraSelect.addEventListener("change", () => this.chooseCamera(this.cameraSelect.value));
    this.micSelect.addEventListener("change", () => this.chooseMic(this.micSelect.value));
    this.speakerSelect.addEventListener("change", () => prefs.set("speakerId", this.speakerSelect.value));
    this.onDeviceChange = () => this.active && this.refreshDevices();
    navigator.mediaDevices?.addEventListener?.("devicechange", this.onDeviceChange);
  }

  async show({ room, name }) {
    this.root.hidden = false;
    this.active = true;
    this.room = room;
    this.name = name;
    document.title = `${room} · Plaza`;
    $("#prejoin-room").textContent = room;
    $("#preview-name").textContent = name;
    const avatar = $("#preview-avatar");
    avatar.textContent = initials(name);
    avatar.style.setProperty("--hue", hueFor(name));
    this.cameraProblem = this.microphoneProblem = null;
    this.render("starting");
    this.joinBtn.focus();
    this.loadOccupancy();

    const opened = await openBoth({ cameraId: prefs.get("cameraId"), microphoneId: prefs.get("microphoneId") });
    if (!this.active) {
      opened.camera?.stop();
      opened.microphone?.stop();
      return;
    }
    this.setCamera(opened.camera);
    this.setMic(opened.microphone);
    this.cameraProblem = opened.cameraProblem;
    this.microphoneProblem = opened.microphoneProblem;
    this.cameraOff = !opened.camera;
    await this.refreshDevices();
    this.render();
  }

  async loadOccupancy() {
    const line = $("#prejoin-occupancy");
    try {
      const body = await (await fetch("api/rooms", { cache: "no-store" })).json();
      const room = (body.rooms ?? []).find((r) => r.name === this.room);
      const n = room?.participants ?? 0;
      line.textContent = n === 0 ? "No one else is here yet." : n === 1 ? "1 person is in the call." : `${n} people are in the call.`;
    } catch {
      line.textContent = "\u00a0";
    }
  }

  setCamera(track) {
    if (this.camera && this.camera !== track) this.camera.stop();
    this.camera = track;
    this.video.srcObject = track ? new MediaStream([track]) : null;
  }

  setMic(track) {
    if (this.microphone && this.microphone !== track) this.microphone.stop();
    this.microphone = track;
    this.meter?.stop();
    this.meter = null;
    if (track) {
      track.enabled = !this.micMuted;
      this.meter = new LevelMeter(track, (level) => this.showLevel(level));
    } else {
      this.showLevel(0);
    }
  }

  showLevel(level) {
    const lit = Math.round(level * this.meterBars.length * 1.4);
    this.meterBars.forEach((bar, i) => bar.classList.toggle("on", !this.micMuted && i < lit));
  }

  async refreshDevices() {
    this.devices = await listDevices();
    fillSelect(this.cameraSelect, this.devices.videoinput, this.camera?.getSettings().deviceId ?? prefs.get("cameraId"), "No camera found");
    fillSelect(this.micSelect, this.devices.audioinput, this.microphone?.getSettings().deviceId ?? prefs.get("microphoneId"), "No microphone found");
    const speakers = canChooseSpeaker() && this.devices.audiooutput.length > 0;
    $("#speaker-field").hidden = !speakers;
    if (speakers) fillSelect(this.speakerSelect, this.devices.audiooutput, prefs.get("speakerId"), "Default");
  }

  async toggleCamera() {
    if (this.busy) return;
    if (this.camera) {
      this.setCamera(null);
      this.cameraOff = true;
      this.render();
      return;
    }
    await this.withBusy(async () => {
      try {
        this.setCamera(await openCamera(this.cameraSelect.value || prefs.get("cameraId")));
        this.cameraOff = false;
        this.cameraProblem = null;
        await this.refreshDevices();
      } catch (err) {
        this.cameraProblem = err;
      }
    });
  }

  async toggleMic() {
    if (this.busy) return;
    if (this.microphone) {
      this.micMuted = !this.micMuted;
      this.microphone.enabled = !this.micMuted;
      this.render();
      return;
    }
    await this.withBusy(async () => {
      try {
        this.micMuted = false;
        this.setMic(await openMicrophone(this.micSelect.value || prefs.get("microphoneId")));
        this.microphoneProblem = null;
        await this.refreshDevices();
      } catch (err) {
        this.microphoneProblem = err;
      }
    });
  }

  async chooseCamera(deviceId) {
    prefs.set("cameraId", deviceId);
    if (!this.camera) return;
    await this.withBusy(async () => {
      try {
        this.setCamera(null);
        this.setCamera(await openCamera(deviceId));
        this.cameraProblem = null;
      } catch (err) {
        this.cameraProblem = err;
        this.cameraOff = true;
      }
    });
  }

  async chooseMic(deviceId) {
    prefs.set("microphoneId", deviceId);
    await this.withBusy(async () => {
      try {
        this.setMic(await openMicrophone(deviceId));
        this.microphoneProblem = null;
      } catch (err) {
        this.microphoneProblem = err;
      }
    });
  }

  async withBusy(fn) {
    this.busy = true;
    this.render();
    try {
      await fn();
    } finally {
      this.busy = false;
      if (this.active) this.render();
    }
  }

  render(phase) {
    const starting = phase === "starting";
    const camOn = !!this.camera;
    this.preview.classList.toggle("cam-off", !camOn);
    this.preview.classList.toggle("mic-muted", !this.microphone || this.micMuted);
    const offText = starting
      ? "Starting camera…"
      : this.cameraProblem?.reason === "denied"
        ? "Camera blocked"
        : this.cameraProblem?.reason === "missing"
          ? "No camera"
          : this.cameraProblem
            ? "Camera unavailable"
            : "Camera is off";
    $("#preview-off-text").textContent = offText;

    const micOn = !!this.microphone && !this.micMuted;
    this.micBtn.innerHTML = icon(micOn ? "mic" : "micOff");
    this.micBtn.classList.toggle("off", !micOn);
    this.micBtn.disabled = starting || this.busy;
    this.micBtn.title = this.microphone ? (this.micMuted ? "Unmute microphone" : "Mute microphone") : "Turn microphone on";
    this.micBtn.setAttribute("aria-label", this.micBtn.title);
    this.micBtn.setAttribute("aria-pressed", String(!micOn));

    this.camBtn.innerHTML = icon(camOn ? "cam" : "camOff");
    this.camBtn.classList.toggle("off", !camOn);
    this.camBtn.disabled = starting || this.busy;
    this.camBtn.title = camOn ? "Turn camera off" : "Turn camera on";
    this.camBtn.setAttribute("aria-label", this.camBtn.title);
    this.camBtn.setAttribute("aria-pressed", String(!camOn));

    const problems = [this.cameraProblem, this.microphoneProblem].filter(Boolean);
    const box = $("#device-problems");
    const items = problems.map((p) => h("div.problem", { dataset: { kind: p.kind, reason: p.reason } }, h("span", { html: icon("alert", 18) }), h("span", {}, p.message)));
    const listenOnly = !starting && !this.camera && !this.microphone && !this.cameraOff;
    if (problems.length && !this.camera && !this.microphone) {
      items.push(h("div.problem.hint", {}, h("span", { html: icon("volume", 18) }), h("span", {}, "You can still join to listen and watch.")));
    }
    box.replaceChildren(...items);

    this.joinBtn.disabled = starting;
    this.joinBtn.textContent = starting ? "Getting ready…" : !this.camera && !this.microphone ? (listenOnly || problems.length ? "Join to listen" : "Join now") : "Join now";
  }

  join() {
    if (this.joinBtn.disabled) return;
    const cameraAvailable =
      !!this.camera ||
      (this.devices.videoinput.length > 0 && !["denied", "unsupported", "missing"].includes(this.cameraProblem?.reason));
    const options = {
      room: this.room,
      name: this.name,
      camera: this.camera,
      microphone: this.microphone,
      micMuted: this.micMuted,
      cameraAvailable,
      cameraId: this.camera?.getSettings().deviceId ?? (this.cameraSelect.value || prefs.get("cameraId")),
      microphoneId: this.microphone?.getSettings().deviceId ?? (this.micSelect.value || prefs.get("microphoneId")),
    };
    // The call takes the tracks over.
    this.camera = null;
    this.microphone = null;
    this.meter?.stop();
    this.meter = null;
    this.video.srcObject = null;
    this.hide();
    this.onJoin(options);
  }

  release() {
    this.setCamera(null);
    this.setMic(null);
  }

  hide() {
    this.active = false;
    this.root.hidden = true;
  }
}

/** Fills a <select> with devices, keeping `selectedId` selected when present. */
export function fillSelect(select, devices, selectedId, emptyText) {
  const options = devices.map((d, i) =>
    h("option", { value: d.deviceId }, d.label || `${d.kind === "videoinput" ? "Camera" : d.kind === "audioinput" ? "Microphone" : "Speaker"} ${i + 1}`),
  );
  if (!options.length) options.push(h("option", { value: "" }, emptyText));
  select.replaceChildren(...options);
  select.disabled = devices.length === 0;
  if (selectedId && devices.some((d) => d.deviceId === selectedId)) select.value = selectedId;
}
