// Remembered on this browser: the display name and the chosen devices (localStorage), and the
// call this tab is in (sessionStorage, so that reloading the page rejoins it).

const PREFIX = "plaza.";

function storage(kind) {
  try {
    const s = window[kind];
    s.getItem("x");
    return s;
  } catch {
    return null; // storage disabled (privacy mode, sandboxed frame): forget everything
  }
}

export const prefs = {
  get(key) {
    return storage("localStorage")?.getItem(PREFIX + key) ?? null;
  },
  set(key, value) {
    const s = storage("localStorage");
    if (!s) return;
    if (value === null || value === undefined || value === "") s.removeItem(PREFIX + key);
    else s.setItem(PREFIX + key, String(value));
  },
};

/** The call this tab is in: { room, name, micMuted, cameraOff }, or null. */
export const activeCall = {
  get() {
    try {
      return JSON.parse(storage("sessionStorage")?.getItem(PREFIX + "active") ?? "null");
    } catch {
      return null;
    }
  },
  set(value) {
    storage("sessionStorage")?.setItem(PREFIX + "active", JSON.stringify(value));
  },
  clear() {
    storage("sessionStorage")?.removeItem(PREFIX + "active");
  },
};
