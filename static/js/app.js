// Plaza's browser client: lobby → pre-join → call → ended. Plain ES modules, no build step.

import { $ } from "./util.js";
import { icon, logo } from "./icons.js";
import { LobbyView } from "./lobby.js";
import { PrejoinView } from "./prejoin.js";
import { CallView } from "./callview.js";
import { Call } from "./call.js";
import { openBoth } from "./media.js";
import { activeCall, prefs } from "./prefs.js";
import { toast } from "./toasts.js";

for (const el of document.querySelectorAll("[data-logo]")) el.innerHTML = logo(26);
for (const el of document.querySelectorAll("[data-icon]")) el.innerHTML = icon(el.dataset.icon, el.closest(".field") ? 16 : 18);

let call = null;
let lastJoin = null;

/** Diagnostics and test hooks: the current WebSocket and peer connection, counters. */
window.plaza = {
  get call() {
    return call;
  },
  get ws() {
    return call?.ws ?? null;
  },
  get pc() {
    return call?.pc ?? null;
  },
  get participantId() {
    return call?.selfId ?? null;
  },
  /** mid -> {participant_id, track_id, kind} of the latest offer. */
  get recvBindings() {
    return call?.conn ? Object.fromEntries(call.conn.recvByMid) : {};
  },
  get stats() {
    return {
      offers: call?.totals.offers ?? 0,
      answers: call?.totals.answers ?? 0,
      connections: call?.totals.connections ?? 0,
      reconnects: call?.totals.reconnects ?? 0,
      state: call?.state ?? "idle",
      mediaState: call?.mediaState ?? "new",
    };
  },
};

const views = {
  lobby: new LobbyView({ onContinue: ({ room, name }) => goPrejoin(room, name) }),
  prejoin: new PrejoinView({ onJoin: (options) => startCall(options), onBack: () => goLobby() }),
  call: new CallView({ onLeave: () => leaveCall() }),
};

function hideAll() {
  views.lobby.hide();
  views.prejoin.hide();
  $("#ended").hidden = true;
}

function setRoomInUrl(room) {
  const url = new URL(location.href);
  if (room) url.searchParams.set("room", room);
  else url.searchParams.delete("room");
  history.replaceState(null, "", url);
}

function goLobby(room) {
  hideAll();
  setRoomInUrl(room ?? null);
  views.lobby.show({ room: room ?? "", name: prefs.get("name") ?? "" });
}

function goPrejoin(room, name) {
  prefs.set("name", name);
  setRoomInUrl(room);
  hideAll();
  views.prejoin.show({ room, name });
}

function startCall(options) {
  hideAll();
  setRoomInUrl(options.room);
  lastJoin = { room: options.room, name: options.name };
  call = new Call(options);
  activeCall.set({ room: options.room, name: options.name, micMuted: call.local.mic.muted, cameraOff: call.local.cam.muted });
  const persist = () => {
    if (call?.state !== "left" && call?.state !== "failed") {
      activeCall.set({ room: call.room, name: call.name, micMuted: call.local.mic.muted, cameraOff: call.local.cam.muted });
    }
  };
  call.on("change", persist);
  call.on("fatal", ({ message }) => {
    const failed = call;
    views.call.hide();
    failed.leave();
    activeCall.clear();
    call = null;
    showEnded({ title: "Could not join the call", text: message, error: true });
  });
  views.call.show(call);
  call.start();
}

function leaveCall() {
  if (!call) return;
  const room = call.room;
  call.leave();
  views.call.hide();
  activeCall.clear();
  call = null;
  showEnded({ title: "You left the call", text: `Room ${room}` });
}

function showEnded({ title, text, error = false }) {
  hideAll();
  $("#ended").hidden = false;
  $("#ended-title").textContent = title;
  $("#ended-text").textContent = text;
  $("#ended-icon").innerHTML = icon(error ? "alert" : "leave", 30);
  $("#ended-icon").dataset.kind = error ? "error" : "left";
  $("#rejoin-btn").textContent = error ? "Try again" : "Rejoin";
  document.title = "Plaza";
  $("#rejoin-btn").focus();
}

$("#rejoin-btn").addEventListener("click", () => {
  if (lastJoin) goPrejoin(lastJoin.room, lastJoin.name);
  else goLobby();
});
$("#home-btn").addEventListener("click", () => goLobby());

// Leaving the page: tell the server now, so the others see us go at once.
window.addEventListener("pagehide", () => {
  if (call && call.state !== "left") call.conn?.send({ type: "leave" });
});

/** Reloading the page during a call rejoins it directly, with the same camera and mic state. */
async function rejoin(saved) {
  hideAll();
  $("#ended").hidden = true;
  const opened = await openBoth({
    cameraId: prefs.get("cameraId"),
    microphoneId: prefs.get("microphoneId"),
    wantCamera: !saved.cameraOff,
    wantMicrophone: true,
  });
  if (opened.cameraProblem && !saved.cameraOff) toast(opened.cameraProblem.message, { kind: "error", timeout: 7000 });
  if (opened.microphoneProblem) toast(opened.microphoneProblem.message, { kind: "error", timeout: 7000 });
  const cameraUsable = !opened.cameraProblem || !["denied", "missing", "unsupported"].includes(opened.cameraProblem.reason);
  startCall({
    room: saved.room,
    name: saved.name,
    camera: opened.camera,
    microphone: opened.microphone,
    micMuted: !!saved.micMuted,
    cameraAvailable: cameraUsable,
    cameraId: opened.camera?.getSettings().deviceId ?? prefs.get("cameraId"),
    microphoneId: opened.microphone?.getSettings().deviceId ?? prefs.get("microphoneId"),
  });
}

const params = new URLSearchParams(location.search);
const roomParam = params.get("room")?.trim() ?? "";
const saved = activeCall.get();
if (saved && saved.room === roomParam && saved.name) {
  rejoin(saved);
} else {
  activeCall.clear();
  goLobby(roomParam || null);
}
