// Pre-join and devices: a camera preview with a level meter; joining with camera and microphone
// off; clear messages when access is denied or there is no device; listening only still works.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  expectAudioArriving,
  expectVideoPlaying,
  failingMedia,
  launchBrowser,
  openPage,
  participantId,
  screenshot,
  startServer,
  waitInPage,
} from "./lib.js";

const ROOM = `devices-${Math.random().toString(36).slice(2, 7)}`;


async function goToPrejoin(page, base, name) {
  await page.goto(`${base}?room=${encodeURIComponent(ROOM)}`);
  await page.waitForSelector("#lobby:not([hidden])");
  assert.equal(await page.inputValue("#room-input"), ROOM, "the shared link pre-fills the room");
  await page.fill("#name-input", name);
  await page.click("#lobby-continue");
  await page.waitForSelector("#prejoin:not([hidden])");
  await waitInPage(page, "the pre-join screen to be ready", () => !document.querySelector("#join-btn").disabled, null, 15_000);
}

describe("pre-join and devices", { timeout: 180_000 }, () => {
  let server;
  let browser;
  let F, D, E; // Farah has a camera and a mic; Dan blocked access; Eve has no devices

  before(async () => {
    server = await startServer("server-devices");
    browser = await launchBrowser();
    F = await openPage(browser, "farah");
    D = await openPage(browser, "dan", { initScript: failingMedia("NotAllowedError") });
    E = await openPage(browser, "eve", { viewport: { width: 390, height: 780 }, initScript: failingMedia("NotFoundError") });
  });

  after(async () => {
    for (const page of [F, D, E]) await page?.closeAll();
    await browser?.close();
    await server?.stop();
  });

  it("shows a camera preview and a moving microphone level, and joins with both off", async () => {
    await goToPrejoin(F, server.base, "Farah Haddad");
    await waitInPage(F, "the camera preview to play", () => document.querySelector("#preview-video").videoWidth > 0, null, 5000);
    await waitInPage(F, "the microphone level meter to move", () => document.querySelectorAll("#mic-meter span.on").length > 0, null, 5000);
    const cameras = await F.$$eval("#camera-select option", (os) => os.length);
    const mics = await F.$$eval("#mic-select option", (os) => os.length);
    assert.ok(cameras >= 1 && mics >= 1, "the devices are listed");
    await screenshot(F, "prejoin");
    await F.click("#pre-cam");
    await F.click("#pre-mic");
    await waitInPage(F, "the preview to show camera off", () => document.querySelector("#preview").classList.contains("cam-off"), null, 2000);
    await F.click("#join-btn");
    await F.waitForSelector("#call:not([hidden])");
    assert.equal(await F.evaluate(() => window.plaza.call.local.cam.track), null, "camera released");
    await waitInPage(F, "the connection indicator to say connected", () => document.querySelector("#conn-state").dataset.state === "connected", null, 5000);
    await screenshot(F, "call-alone");
    assert.equal(await F.evaluate(() => window.plaza.call.local.mic.track.enabled), false, "microphone silenced");
  });

  it("explains a blocked camera and microphone, and still joins to listen", async () => {
    await goToPrejoin(D, server.base, "Dan Brooks");
    const problems = await D.locator("#device-problems").textContent();
    assert.match(problems, /camera is blocked/i);
    assert.match(problems, /microphone is blocked/i);
    assert.match(problems, /still join to listen/i);
    assert.equal((await D.textContent("#join-btn")).trim(), "Join to listen");
    await screenshot(D, "prejoin-blocked");
    await D.click("#join-btn");
    await D.waitForSelector("#call:not([hidden])");
  });

  it("explains missing devices, and still joins to listen", async () => {
    await goToPrejoin(E, server.base, "Eve Novak");
    const problems = await E.locator("#device-problems").textContent();
    assert.match(problems, /no camera found/i);
    assert.match(problems, /no microphone found/i);
    await E.click("#join-btn");
    await E.waitForSelector("#call:not([hidden])");
  });

  it("listeners see and hear the person who turns camera and microphone on", async () => {
    const farah = await participantId(F);
    const tile = `#grid .tile[data-pid="${farah}"]`;
    for (const page of [D, E]) {
      await waitInPage(page, "Farah's tile, camera off and muted", (sel) => {
        const t = document.querySelector(sel);
        return t && t.classList.contains("cam-off") && t.classList.contains("is-muted");
      }, tile, 5000);
    }
    // Listeners have no tracks: Farah sees them as camera off and muted.
    await waitInPage(F, "two listener tiles", () => {
      const tiles = [...document.querySelectorAll("#grid .tile:not(.self)")];
      return tiles.length === 2 && tiles.every((t) => t.classList.contains("cam-off") && t.classList.contains("is-muted"));
    }, null, 5000);

    await F.keyboard.press("v");
    await F.keyboard.press("m");
    for (const page of [D, E]) {
      await waitInPage(page, "Farah's video and microphone on", (sel) => {
        const t = document.querySelector(sel);
        return t && !t.classList.contains("cam-off") && !t.classList.contains("is-muted") && t.querySelector("video").videoWidth > 0;
      }, tile, 8000);
      await expectVideoPlaying(page, tile, 1);
      await expectAudioArriving(page, [farah]);
    }
    await screenshot(E, "call-phone-listener");
    await screenshot(F, "call-with-listeners");
  });
});
