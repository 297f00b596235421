// Shared helpers for Plaza's browser tests: start the real server, drive real Chromium pages.
//
// Nothing here synchronises with fixed sleeps: every wait is for a condition, with a bounded
// timeout and a description of what it waited for.

import { spawn } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const ARTIFACTS = join(ROOT, "test-artifacts");
mkdirSync(ARTIFACTS, { recursive: true });

const PLAZA_BIN = process.env.TEST_PLAZA_BIN ?? join(ROOT, "target/release/plaza");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Starts target/release/plaza on a free port; resolves once /healthz answers. */
export async function startServer(name = "server", env = {}, { listen = "127.0.0.1:0" } = {}) {
  if (!existsSync(PLAZA_BIN)) throw new Error(`${PLAZA_BIN} does not exist: run cargo build --release first`);
  const log = createWriteStream(join(ARTIFACTS, `${name}.log`), { flags: "a" });
  const child = spawn(PLAZA_BIN, ["--listen", listen, "--udp-port", "0", "--advertise-ip", "127.0.0.1", "--log-level", "info"], {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: "1", PLAZA_HTTP__STATIC_DIR: join(ROOT, "static"), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const address = new Promise((resolve, reject) => {
    let buffer = "";
    const onData = (chunk) => {
      log.write(chunk);
      buffer += chunk.toString();
      // e.g. `INFO plaza::server: plaza listening http=127.0.0.1:41234 udp=127.0.0.1:51234`
      const plain = buffer.replace(/\x1b\[[0-9;]*m/g, "");
      const match = plain.match(/plaza listening.*?http=(\S+)/);
      if (match) resolve(match[1]);
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    exited.then(({ code, signal }) => reject(new Error(`plaza exited early (code ${code}, signal ${signal}); see ${name}.log`)));
  });
  const http = await withTimeout(address, 15_000, "the server's `plaza listening` log line");
  const base = `http://${http}/`;
  await waitUntil(async () => {
    try {
      const response = await fetch(`${base}healthz`);
      return response.ok && (await response.text()).trim() === "ok";
    } catch {
      return false;
    }
  }, 15_000, `${base}healthz to answer ok`);
  return {
    base,
    listen: http,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const done = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 5000))]);
        if (!done) {
          child.kill("SIGKILL");
          await exited;
        }
      }
      log.end();
    },
  };
}

export async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export async function waitUntil(predicate, ms, what, intervalMs = 100) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-features=LocalNetworkAccessChecks",
  // Three fake cameras and microphones (so switching devices can be tested for real).
  "--use-fake-device-for-media-stream=device-count=3",
  "--use-fake-ui-for-media-stream",
  "--auto-select-desktop-capture-source=Entire screen",
  "--allow-loopback-in-peer-connection",
];

export async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/** A page in its own browser context (its own storage), with its console saved to a file. */
export async function openPage(browser, label, { viewport = { width: 1280, height: 720 }, initScript } = {}) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  const log = createWriteStream(join(ARTIFACTS, `console-${label}.log`), { flags: "a" });
  const stamp = () => new Date().toISOString().slice(11, 23);
  page.on("console", (msg) => log.write(`${stamp()} ${msg.type()}: ${msg.text()}\n`));
  page.on("pageerror", (err) => log.write(`${stamp()} PAGE ERROR: ${err.stack ?? err}\n`));
  page.label = label;
  page.closeAll = async () => {
    await context.close().catch(() => {});
    log.end();
  };
  return page;
}

/** Waits for a condition evaluated in the page (may be async), with a description. */
export async function waitInPage(page, what, fn, arg, timeout = 10_000) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (err) {
    throw new Error(`[${page.label}] timed out after ${timeout} ms waiting for ${what}: ${err.message.split("\n")[0]}`);
  }
}

/** Makes getUserMedia fail the way a browser does when access is blocked or there is no device. */
export const failingMedia = (name) => `
  navigator.mediaDevices.getUserMedia = () =>
    Promise.reject(new DOMException(${JSON.stringify(name === "NotAllowedError" ? "Permission denied" : "Requested device not found")}, ${JSON.stringify(name)}));
`;

/** Goes through the lobby and the pre-join screen and joins the call. */
export async function joinThroughLobby(page, base, room, name, { expectCall = true } = {}) {
  await page.goto(base);
  await page.waitForSelector("#lobby:not([hidden])");
  await page.fill("#room-input", room);
  await page.fill("#name-input", name);
  await page.click("#lobby-continue");
  await page.waitForSelector("#prejoin:not([hidden])");
  await waitInPage(page, "the pre-join screen to be ready", () => {
    const b = document.querySelector("#join-btn");
    return !b.disabled;
  }, null, 15_000);
  await page.click("#join-btn");
  if (expectCall) await page.waitForSelector("#call:not([hidden])");
}

// ---- in-page probes (run inside the page) -------------------------------------------------

/** Remote camera tiles: pid, whether a video plays, frames decoded so far, and flags. */
export function remoteTiles(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("#grid .tile:not(.self)")].map((tile) => {
      const video = tile.querySelector("video");
      return {
        pid: tile.dataset.pid,
        name: tile.querySelector(".tile-name").textContent,
        width: video.videoWidth,
        frames: video.getVideoPlaybackQuality().totalVideoFrames,
        camOff: tile.classList.contains("cam-off"),
        muted: tile.classList.contains("is-muted"),
      };
    }),
  );
}

/** Frames decoded by the video of each tile matching `selector`, keyed by data-pid. */
export function framesBySelector(page, selector) {
  return page.evaluate((selector) => {
    const out = {};
    for (const tile of document.querySelectorAll(selector)) {
      const video = tile.querySelector("video");
      out[tile.dataset.key] = video.videoWidth > 0 ? video.getVideoPlaybackQuality().totalVideoFrames : -1;
    }
    return out;
  }, selector);
}

/**
 * Asserts that the video of every tile matching `selector` (there must be `count`) is really
 * playing: videoWidth > 0 and decoded frames increase by `minFrames` within `timeout`.
 */
export async function expectVideoPlaying(page, selector, count, { minFrames = 15, timeout = 4000 } = {}) {
  const before = await framesBySelector(page, selector);
  await waitInPage(
    page,
    `${count} playing video(s) in ${selector} with at least ${minFrames} new frames each (frames before: ${JSON.stringify(before)})`,
    ({ selector, count, before, minFrames }) => {
      const tiles = [...document.querySelectorAll(selector)];
      if (tiles.length !== count) return false;
      return tiles.every((tile) => {
        const video = tile.querySelector("video");
        const start = before[tile.dataset.key] ?? 0;
        return video.videoWidth > 0 && video.getVideoPlaybackQuality().totalVideoFrames >= Math.max(start, 0) + minFrames;
      });
    },
    { selector, count, before, minFrames },
    timeout,
  );
}

/** Inbound audio packets per remote participant, from the peer connection's stats. */
export function audioPacketsByParticipant(page) {
  return page.evaluate(async () => {
    const pc = window.plaza.pc;
    if (!pc) return {};
    const bindings = window.plaza.recvBindings;
    const out = {};
    for (const s of (await pc.getStats()).values()) {
      if (s.type !== "inbound-rtp" || s.kind !== "audio") continue;
      const b = bindings[s.mid];
      if (b) out[b.participant_id] = (out[b.participant_id] ?? 0) + s.packetsReceived;
    }
    return out;
  });
}

/** Asserts that audio from each of `pids` keeps arriving (packetsReceived grows). */
export async function expectAudioArriving(page, pids, { minPackets = 20, timeout = 4000 } = {}) {
  const before = await audioPacketsByParticipant(page);
  await waitInPage(
    page,
    `audio packets from ${pids.join(", ")} to grow by ${minPackets} (before: ${JSON.stringify(before)})`,
    async ({ pids, before, minPackets }) => {
      const pc = window.plaza.pc;
      if (!pc) return false;
      const bindings = window.plaza.recvBindings;
      const now = {};
      for (const s of (await pc.getStats()).values()) {
        if (s.type !== "inbound-rtp" || s.kind !== "audio") continue;
        const b = bindings[s.mid];
        if (b) now[b.participant_id] = (now[b.participant_id] ?? 0) + s.packetsReceived;
      }
      return pids.every((pid) => (now[pid] ?? 0) >= (before[pid] ?? 0) + minPackets);
    },
    { pids, before, minPackets },
    timeout,
  );
}

export const participantId = (page) => page.evaluate(() => window.plaza.participantId);

export async function screenshot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path });
  return path;
}
