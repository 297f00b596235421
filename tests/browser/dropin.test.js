// A drop-in room in the browser: visitors come and go while Stella stays. The server reuses the
// m-lines a departed visitor's tracks came on for the next visitor, so Stella's connection keeps
// its size; the page must show each newcomer's video and play its audio on those reused m-lines,
// whether or not the browser fired a `track` event for them.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  expectAudioArriving,
  expectVideoPlaying,
  joinThroughLobby,
  launchBrowser,
  openPage,
  participantId,
  startServer,
  waitInPage,
  waitUntil,
} from "./lib.js";

// Holds every offer the page receives until the test releases them (the page's handling of
// server messages is one ordered chain, so everything after the offer waits too).
const offerGate = `
  window.__holdOffers = () => { window.__gate = new Promise((release) => (window.__releaseOffers = release)); };
  const apply = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = async function (...args) {
    if (window.__gate) await window.__gate;
    return apply.apply(this, args);
  };
`;

describe("a drop-in room", { timeout: 240_000 }, () => {
  let server;
  let browser;
  let S; // Stella stays

  before(async () => {
    server = await startServer("server-dropin");
    browser = await launchBrowser();
    S = await openPage(browser, "stella", { initScript: offerGate });
    await joinThroughLobby(S, server.base, "drop-in", "Stella");
  });

  after(async () => {
    await S?.closeAll();
    await browser?.close();
    await server?.stop();
  });

  const tile = (pid) => `#grid .tile[data-pid="${pid}"]`;
  const transceivers = () => S.evaluate(() => window.plaza.pc.getTransceivers().length);

  /** Scrapes one gauge of the server's /metrics. */
  async function gauge(name) {
    const text = await (await fetch(`${server.base}metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith(`${name} `));
    return line ? Number(line.split(" ")[1]) : NaN;
  }

  async function visitor(i) {
    const page = await openPage(browser, `visitor${i}`);
    await joinThroughLobby(page, server.base, "drop-in", `Visitor ${i}`);
    return { page, pid: await participantId(page) };
  }

  async function leave(v) {
    await v.page.closeAll();
    await waitInPage(S, `visitor ${v.pid}'s tile to go`, (sel) => !document.querySelector(sel), tile(v.pid), 15_000);
  }

  it("one visitor after another is seen and heard on the same m-lines", async () => {
    let size = null;
    for (let i = 0; i < 3; i++) {
      const v = await visitor(i);
      await expectVideoPlaying(S, tile(v.pid), 1, { timeout: 15_000 });
      await expectAudioArriving(S, [v.pid], { timeout: 8000 });
      await expectVideoPlaying(v.page, "#grid .tile:not(.self)", 1, { timeout: 15_000 });
      size ??= await transceivers();
      assert.equal(await transceivers(), size, `Stella's transceivers with visitor ${i} present`);
      await leave(v);
    }
    assert.equal(size, 4, "Stella's own two, and two that every visitor's tracks reused");
  });

  it("a visitor whose tracks take over m-lines that never went inactive is seen and heard", async () => {
    const first = await visitor(10);
    await expectVideoPlaying(S, tile(first.pid), 1, { timeout: 15_000 });
    // Stella holds her offers: the next one (for the third visitor's tracks) stays unanswered
    // while the first visitor leaves and the second comes, so the first visitor's m-lines go
    // straight from carrying its tracks to carrying the second visitor's, sendonly in both.
    const offers = () => S.evaluate(() => window.plaza.stats.offers);
    const before = await offers();
    await S.evaluate(() => window.__holdOffers());
    const third = await visitor(12);
    await waitInPage(S, "the offer for the third visitor's tracks (held)", (n) => window.plaza.stats.offers > n, before, 15_000);
    await first.page.closeAll();
    const second = await visitor(11);
    // The server has the second visitor's tracks (so Stella's session was told to receive them
    // before it hears her answer): Stella, the second and the third visitor publish two each.
    await waitUntil(async () => (await gauge("plaza_published_tracks")) === 6, 15_000, "the server to have 6 published tracks");
    await S.evaluate(() => window.__releaseOffers());
    for (const v of [second, third]) {
      await expectVideoPlaying(S, tile(v.pid), 1, { timeout: 15_000 });
      await expectAudioArriving(S, [v.pid], { timeout: 8000 });
    }
    assert.equal(await S.evaluate((sel) => document.querySelector(sel), tile(first.pid)), null, "the first visitor's tile is gone");
    assert.equal(await transceivers(), 6, "Stella's own two, two reused for the second visitor, two for the third");
    for (const v of [second, third]) await leave(v);
  });

  it("sharing the screen again and again reuses one m-line, and every share is seen", async () => {
    const viewer = await visitor(20);
    await expectVideoPlaying(viewer.page, tile(await participantId(S)), 1, { timeout: 15_000 });
    const stella = await participantId(S);
    const screenTile = `#screens .tile[data-kind="screen"][data-pid="${stella}"]`;
    const mine = () => S.evaluate(() => window.plaza.pc.getTransceivers().filter((t) => t.sender.track || t.currentDirection === "sendonly" || t.direction === "sendonly").length);
    let sending = null;
    for (let share = 0; share < 3; share++) {
      await S.click("#btn-screen");
      await viewer.page.waitForSelector(screenTile, { timeout: 10_000 });
      await expectVideoPlaying(viewer.page, screenTile, 1, { minFrames: 5, timeout: 10_000 });
      sending ??= await mine();
      assert.equal(await mine(), sending, `Stella's sending transceivers during share ${share + 1}`);
      await S.click("#btn-screen");
      await waitInPage(viewer.page, "the screen-share tile to go away", (sel) => !document.querySelector(sel), screenTile, 10_000);
    }
    assert.equal(sending, 3, "microphone, camera, and one for every screen share");
    await viewer.page.closeAll();
  });
});
