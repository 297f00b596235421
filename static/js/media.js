// Local media: opening the camera and microphone with friendly errors, listing devices, and a
// microphone level meter.

export const VIDEO_CONSTRAINTS = {
  width: { ideal: 960 },
  height: { ideal: 540 },
  frameRate: { ideal: 24, max: 30 },
};

export const AUDIO_CONSTRAINTS = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
};

/** Why a device could not be opened, in words for people. */
export class MediaProblem extends Error {
  constructor(kind, reason, cause) {
    super(describe(kind, reason));
    this.kind = kind; // "camera" | "microphone" | "screen"
    this.reason = reason; // "denied" | "missing" | "busy" | "unsupported" | "failed"
    this.cause = cause;
  }
}

function describe(kind, reason) {
  const what = kind === "camera" ? "camera" : kind === "microphone" ? "microphone" : "screen";
  switch (reason) {
    case "denied":
      return kind === "screen"
        ? "Screen sharing was not allowed."
        : `Access to the ${what} is blocked. Allow it in your browser's site settings (the icon left of the address), then try again.`;
    case "missing":
      return `No ${what} found. Connect one, or join without it.`;
    case "busy":
      return `The ${what} is in use by another application, or could not be started.`;
    case "unsupported":
      return kind === "screen"
        ? "This browser cannot share the screen."
        : "This browser cannot use cameras or microphones here. Open the page over https:// or on localhost.";
    default:
      return `The ${what} could not be opened.`;
  }
}

function classify(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
    case "PermissionDeniedError":
      return "denied";
    case "NotFoundError":
    case "DevicesNotFoundError":
    case "OverconstrainedError":
      return "missing";
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return "busy";
    case "TypeError":
      return "unsupported";
    default:
      return "failed";
  }
}

export const mediaSupported = () => !!navigator.mediaDevices?.getUserMedia;

async function open(kind, constraints) {
  if (!mediaSupported()) throw new MediaProblem(kind, "unsupported");
  try {
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    return kind === "camera" ? stream.getVideoTracks()[0] : stream.getAudioTracks()[0];
  } catch (err) {
    throw new MediaProblem(kind, classify(err), err);
  }
}

export function openCamera(deviceId) {
  const video = { ...VIDEO_CONSTRAINTS };
  if (deviceId) video.deviceId = { exact: deviceId };
  return open("camera", { video });
}

export function openMicrophone(deviceId) {
  const audio = { ...AUDIO_CONSTRAINTS };
  if (deviceId) audio.deviceId = { exact: deviceId };
  return open("microphone", { audio });
}

/**
 * Opens both devices with one permission prompt when possible, falling back to each alone so
 * that one missing or broken device does not prevent using the other. Never throws.
 * @returns {Promise<{camera, microphone, cameraProblem, microphoneProblem}>}
 */
export async function openBoth({ cameraId, microphoneId, wantCamera = true, wantMicrophone = true } = {}) {
  const result = { camera: null, microphone: null, cameraProblem: null, microphoneProblem: null };
  if (!mediaSupported()) {
    result.cameraProblem = new MediaProblem("camera", "unsupported");
    result.microphoneProblem = new MediaProblem("microphone", "unsupported");
    return result;
  }
  if (wantCamera && wantMicrophone) {
    try {
      const audio = { ...AUDIO_CONSTRAINTS, ...(microphoneId ? { deviceId: { ideal: microphoneId } } : {}) };
      const video = { ...VIDEO_CONSTRAINTS, ...(cameraId ? { deviceId: { ideal: cameraId } } : {}) };
      const stream = await navigator.mediaDevices.getUserMedia({ audio, video });
      result.camera = stream.getVideoTracks()[0] ?? null;
      result.microphone = stream.getAudioTracks()[0] ?? null;
      return result;
    } catch {
      // Fall through: find out device by device what works.
    }
  }
  if (wantMicrophone) {
    try {
      result.microphone = await openMicrophone(microphoneId).catch((err) =>
        microphoneId && err.reason === "missing" ? openMicrophone() : Promise.reject(err),
      );
    } catch (err) {
      result.microphoneProblem = err;
    }
  }
  if (wantCamera) {
    try {
      result.camera = await openCamera(cameraId).catch((err) =>
        cameraId && err.reason === "missing" ? openCamera() : Promise.reject(err),
      );
    } catch (err) {
      result.cameraProblem = err;
    }
  }
  return result;
}

/** Lists the devices, grouped by kind. Labels are empty until a permission was granted. */
export async function listDevices() {
  const groups = { videoinput: [], audioinput: [], audiooutput: [] };
  if (!navigator.mediaDevices?.enumerateDevices) return groups;
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const device of devices) {
    if (!groups[device.kind] || !device.deviceId) continue;
    // Chromium lists "default" and "communications" aliases of real audio devices: keep the
    // alias for the default only, named after the device it points at.
    if (device.deviceId === "communications") continue;
    groups[device.kind].push(device);
  }
  return groups;
}

export const canChooseSpeaker = () => typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;

export const canShareScreen = () => !!navigator.mediaDevices?.getDisplayMedia;

export async function openScreen() {
  if (!canShareScreen()) throw new MediaProblem("screen", "unsupported");
  try {
    const stream = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 15, max: 30 } },
      audio: false,
    });
    const track = stream.getVideoTracks()[0];
    if ("contentHint" in track) track.contentHint = "detail";
    return track;
  } catch (err) {
    throw new MediaProblem("screen", classify(err), err);
  }
}

/**
 * A microphone level meter: an AnalyserNode on the track, sampled each animation frame.
 * `onLevel` receives a value from 0 to 1 (perceptual, not linear).
 */
export class LevelMeter {
  static #context = null;

  static context() {
    if (!LevelMeter.#context) {
      const Ctx = window.AudioContext ?? window.webkitAudioContext;
      if (!Ctx) return null;
      LevelMeter.#context = new Ctx();
    }
    if (LevelMeter.#context.state === "suspended") LevelMeter.#context.resume().catch(() => {});
    return LevelMeter.#context;
  }

  constructor(track, onLevel) {
    this.onLevel = onLevel;
    this.stopped = false;
    const ctx = LevelMeter.context();
    if (!ctx || !track) return;
    this.source = ctx.createMediaStreamSource(new MediaStream([track]));
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 512;
    this.analyser.smoothingTimeConstant = 0.3;
    this.source.connect(this.analyser);
    this.samples = new Float32Array(this.analyser.fftSize);
    this.level = 0;
    this.tick = this.tick.bind(this);
    this.frame = requestAnimationFrame(this.tick);
  }

  tick() {
    if (this.stopped) return;
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const s of this.samples) sum += s * s;
    const rms = Math.sqrt(sum / this.samples.length);
    // Map -60..0 dBFS to 0..1, with a fast attack and a slower release.
    const db = 20 * Math.log10(Math.max(rms, 1e-6));
    const target = Math.min(1, Math.max(0, (db + 60) / 60));
    this.level = target > this.level ? target : this.level * 0.85 + target * 0.15;
    this.onLevel(this.level);
    this.frame = requestAnimationFrame(this.tick);
  }

  stop() {
    this.stopped = true;
    cancelAnimationFrame(this.frame);
    try {
      this.source?.disconnect();
    } catch {
      /* already disconnected */
    }
  }
}
