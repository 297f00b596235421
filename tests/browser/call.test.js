// A three-person call in real headless Chromium, driven through the UI like a user would.
// The steps build on each other (same server, same three pages) and run in order.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  expectAudioArriving,
  expectVideoPlaying,
  joinThroughLobby,
  launchBrowser,
  openPage,
  participantId,
  remoteTiles,
  screenshot,
  startServer,
  waitInPage,
} from "./lib.js";

const ROOM = `standup-${Math.random().toString(36).slice(2, 7)}`;
const REMOTE_CAMERAS = "#grid .tile:not(.self)";
const tileOf = (pid) => `#grid .tile[data-pid="${pid}"]`;

describe("a three-person call", { timeout: 300_000 }, () => {
  let server;
  let browser;
  let A, B, C; // Alice and Bob on laptops, Chloe on a phone-sized screen
  let lobby; // someone looking at the lobby meanwhile
  const pid = {};

  before(async () => {
    server = await startServer("server-call");
    browser = await launchBrowser();
    A = await openPage(browser, "alice");
    B = await openPage(browser, "bob");
    C = await openPage(browser, "chloe", { viewport: { width: 390, height: 780 } });
  });

  after(async () => {
    for (const page of [A, B, C, lobby]) await page?.closeAll();
    await browser?.close();
    await server?.stop();
  });

  it("three people join through the lobby; each sees two playing remote videos with audio within 5 s", async (t) => {
    // Join one after the other, as people do; time from the last click on "Join now".
    await joinThroughLobby(A, server.base, ROOM, "Alice Martin");
    await joinThroughLobby(B, server.base, ROOM, "Bob Okafor");
    await joinThroughLobby(C, server.base, ROOM, "Chloé Dubois");
    const lastJoin = Date.now(); // (the call screen appears as the button is clicked)
    for (const page of [A, B, C]) {
      const left = Math.max(500, 5000 - (Date.now() - lastJoin));
      await waitInPage(
        page,
        "two remote tiles with decoded video",
        (sel) => {
          const tiles = [...document.querySelectorAll(sel)];
          return tiles.length === 2 && tiles.every((t) => t.querySelector("video").videoWidth > 0);
        },
        REMOTE_CAMERAS,
        left,
      );
    }
    const elapsed = Date.now() - lastJoin;
    assert.ok(elapsed <= 5000, `all pages showed video ${elapsed} ms after the last join`);
    t.diagnostic(`every page showed two remote videos ${elapsed} ms after the last join`);

    pid.A = await participantId(A);
    pid.B = await participantId(B);
    pid.C = await participantId(C);
    assert.ok(pid.A && pid.B && pid.C, "every page knows its participant id");
    const expected = { A: [pid.B, pid.C], B: [pid.A, pid.C], C: [pid.A, pid.B] };
    for (const [key, page] of Object.entries({ A, B, C })) {
      const tiles = await remoteTiles(page);
      assert.deepEqual(tiles.map((t) => t.pid).sort(), expected[key].sort(), `${page.label} shows the other two`);
      await expectVideoPlaying(page, REMOTE_CAMERAS, 2);
      await expectAudioArriving(page, expected[key]);
    }
    // Names are shown on the tiles; the self view is mirrored.
    const names = (await remoteTiles(B)).map((t) => t.name).sort();
    assert.deepEqual(names, ["Alice Martin", "Chloé Dubois"]);
    const mirrored = await A.evaluate(() => getComputedStyle(document.querySelector("#grid .tile.self video")).transform);
    assert.match(mirrored, /^matrix\(-1, 0, 0, 1/, "the self view is mirrored");
    for (const page of [A, B, C]) {
      await waitInPage(page, "the connection indicator to say connected", () => document.querySelector("#conn-state").dataset.state === "connected");
    }
  });

  it("the lobby lists the room with its participant count", async () => {
    lobby = await openPage(browser, "lobby", { viewport: { width: 1280, height: 720 } });
    {
      await lobby.goto(server.base);
      await waitInPage(
        lobby,
        `the lobby to list ${ROOM} with 3 people`,
        (room) => document.querySelector(`#room-list li[data-room="${room}"] .count`)?.textContent === "3",
        ROOM,
      );
      await lobby.fill("#name-input", "Dana");
      await screenshot(lobby, "lobby");
      // The shareable link pre-fills the room, and the name is remembered on this browser.
      await lobby.goto(`${server.base}?room=${encodeURIComponent(ROOM)}`);
      await lobby.waitForSelector("#lobby:not([hidden])");
      assert.equal(await lobby.inputValue("#room-input"), ROOM);
      const remembered = await A.evaluate(() => localStorage.getItem("plaza.name"));
      assert.equal(remembered, "Alice Martin");
      // The lobby page stays open: it must notice when someone leaves (see below).
    }
  });

  it("mute and camera off in A show up in B and C; the active speaker is highlighted; camera on brings the video back", async () => {
    // Mute with the keyboard shortcut.
    await A.locator("body").click({ position: { x: 5, y: 5 } });
    await A.keyboard.press("m");
    for (const page of [B, C]) {
      await waitInPage(page, "A's muted indicator", (sel) => {
        const tile = document.querySelector(sel);
        const indicator = tile?.querySelector(".mic-indicator");
        return tile?.classList.contains("is-muted") && indicator && getComputedStyle(indicator).display !== "none";
      }, tileOf(pid.A), 3000);
    }
    assert.equal(await A.evaluate(() => window.plaza.call.local.mic.track.enabled), false, "A really stops sending audio");
    // Unmute with the button.
    await A.click("#btn-mic");
    for (const page of [B, C]) {
      await waitInPage(page, "A's muted indicator to go away", (sel) => !document.querySelector(sel)?.classList.contains("is-muted"), tileOf(pid.A), 3000);
    }

    // With B and C muted, A (whose fake microphone beeps) is the active speaker for both.
    for (const page of [B, C]) await page.click("#btn-mic");
    for (const page of [B, C]) {
      await waitInPage(page, "A's tile highlighted as the active speaker", (sel) => document.querySelector(sel)?.classList.contains("speaking"), tileOf(pid.A), 8000);
    }
    for (const page of [B, C]) await page.click("#btn-mic");

    // Camera off with the keyboard shortcut: B and C see A's initials instead of video.
    await A.keyboard.press("v");
    for (const page of [B, C]) {
      await waitInPage(page, "A's camera-off placeholder", (sel) => {
        const tile = document.querySelector(sel);
        const placeholder = tile?.querySelector(".placeholder");
        return tile?.classList.contains("cam-off") && getComputedStyle(placeholder).display !== "none" && placeholder.textContent.trim() === "AM";
      }, tileOf(pid.A), 3000);
    }
    assert.equal(await A.evaluate(() => window.plaza.call.local.cam.track), null, "the camera is released while off");
    await screenshot(B, "call-camera-off");

    // Camera on with the button: the video comes back and plays.
    await A.click("#btn-cam");
    for (const page of [B, C]) {
      await waitInPage(page, "A's video to come back", (sel) => {
        const tile = document.querySelector(sel);
        return tile && !tile.classList.contains("cam-off") && tile.querySelector("video").videoWidth > 0;
      }, tileOf(pid.A), 5000);
      await expectVideoPlaying(page, tileOf(pid.A), 1);
    }
  });

  it("a chat message typed in A appears in B and C with A's name", async () => {
    const text = `Hello from Alice ${Date.now()}`;
    await A.click("#btn-chat");
    await A.fill("#chat-input", text);
    await A.press("#chat-input", "Enter");
    await waitInPage(A, "A's own message in the chat", (text) => [...document.querySelectorAll("#chat-log .chat-msg")].some((m) => m.textContent.includes(text)), text, 3000);
    for (const page of [B, C]) {
      // The unread badge tells people there is something new.
      await waitInPage(page, "the unread chat badge", () => !document.querySelector("#chat-badge").hidden, null, 3000);
      await page.click("#btn-chat");
      const message = page.locator("#chat-log .chat-msg", { hasText: text });
      await message.waitFor({ state: "visible", timeout: 3000 });
      assert.equal(await message.locator(".chat-name").textContent(), "Alice Martin");
      assert.match(await message.locator(".chat-time").textContent(), /\d{1,2}[:.]\d{2}/);
    }
    await B.fill("#chat-input", "Hi Alice! Ready when you are.");
    await B.press("#chat-input", "Enter");
    await A.locator("#chat-log .chat-msg", { hasText: "Ready when you are" }).waitFor({ timeout: 3000 });
    await B.click("#tab-people");
    await waitInPage(B, "the participant list to show 3 people", () => document.querySelectorAll("#people-list .person").length === 3, null, 2000);
    await B.click("#tab-chat");
    await screenshot(A, "call-three-people");
    await screenshot(C, "call-phone-chat");
    for (const page of [A, B, C]) await page.click("#panel-close");
    await screenshot(C, "call-phone");
  });

  it("screen share from A appears as an extra playing video in B and C, and stops cleanly", async () => {
    await A.click("#btn-screen");
    const screenTile = `#screens .tile[data-kind="screen"][data-pid="${pid.A}"]`;
    for (const page of [B, C]) {
      await page.waitForSelector(screenTile, { timeout: 8000 });
      await expectVideoPlaying(page, screenTile, 1, { minFrames: 5, timeout: 6000 });
      // Still three camera tiles (the screen is an extra tile, not a replacement).
      assert.equal(await page.locator("#grid .tile").count(), 3);
    }
    await screenshot(B, "call-screen-share");
    await screenshot(C, "call-phone-screen-share");
    await A.waitForSelector(`#screens .tile.self[data-kind="screen"]`);
    await screenshot(A, "call-presenting");
    await A.click("#btn-screen");
    for (const page of [B, C]) {
      await waitInPage(page, "the screen-share tile to go away", (sel) => !document.querySelector(sel), screenTile, 5000);
      await expectVideoPlaying(page, REMOTE_CAMERAS, 2);
    }
    assert.equal(await A.locator("#screens .tile").count(), 0);
    assert.equal(await A.evaluate(() => window.plaza.call.local.screen), null);
  });

  it("switching A's camera and microphone keeps media flowing in B without renegotiating", async () => {
    // Let any negotiation in flight settle: both sides stable.
    for (const page of [A, B]) await waitInPage(page, "a stable signalling state", () => window.plaza.pc.signalingState === "stable", null, 5000);
    const offersBefore = { A: await A.evaluate(() => window.plaza.stats.offers), B: await B.evaluate(() => window.plaza.stats.offers) };
    const before = await A.evaluate(() => ({ label: window.plaza.call.local.cam.track.label, mic: window.plaza.call.local.mic.track.label }));

    await A.click("#btn-settings-2");
    await A.waitForSelector("#settings[open]");
    const cameras = await A.$$eval("#set-camera option", (os) => os.map((o) => ({ value: o.value, label: o.textContent })));
    assert.ok(cameras.length >= 2, `several fake cameras are listed (${JSON.stringify(cameras)})`);
    // Chromium's fake_device_1 simulates a depth camera (16-bit grey frames) that WebRTC cannot
    // encode, so switch to fake_device_2, an ordinary (MJPEG) fake camera.
    const other = cameras.find((c) => c.label === "fake_device_2") ?? cameras.find((c) => c.label !== before.label);
    await screenshot(A, "call-settings");
    await A.selectOption("#set-camera", other.value);
    await waitInPage(A, `the camera to become ${other.label}`, (label) => {
      const track = window.plaza.call.local.cam.track;
      return track?.label === label && track.readyState === "live" && window.plaza.pc.getSenders().some((s) => s.track === track);
    }, other.label, 5000);

    const mics = await A.$$eval("#set-mic option", (os) => os.map((o) => ({ value: o.value, label: o.textContent })));
    const otherMic = mics.find((m) => m.label !== before.mic && m.value !== "default");
    await A.selectOption("#set-mic", otherMic.value);
    await waitInPage(A, `the microphone to become ${otherMic.label}`, (label) => {
      const track = window.plaza.call.local.mic.track;
      return track?.label === label && window.plaza.pc.getSenders().some((s) => s.track === track);
    }, otherMic.label, 5000);
    await A.keyboard.press("Escape");

    await expectVideoPlaying(B, tileOf(pid.A), 1);
    await expectAudioArriving(B, [pid.A]);
    const offersAfter = { A: await A.evaluate(() => window.plaza.stats.offers), B: await B.evaluate(() => window.plaza.stats.offers) };
    assert.deepEqual(offersAfter, offersBefore, "no offer was exchanged: replaceTrack only");
    const oldTrackEnded = await A.evaluate((label) => window.plaza.call.local.cam.track.label !== label, before.label);
    assert.ok(oldTrackEnded);
  });

  it("A leaves: its tile disappears from B and C within 2 s", async () => {
    await A.click("#btn-leave");
    const started = Date.now();
    for (const page of [B, C]) {
      await waitInPage(page, "A's tile to disappear", (sel) => !document.querySelector(sel), tileOf(pid.A), Math.max(200, 2000 - (Date.now() - started)));
    }
    await A.waitForSelector("#ended:not([hidden])");
    await screenshot(A, "ended");
    // B and C are told.
    await B.locator("#toasts .toast", { hasText: "Alice Martin left" }).waitFor({ timeout: 2000 });
    await expectVideoPlaying(B, REMOTE_CAMERAS, 1);
    // The open lobby refreshes by itself: two people left in the room.
    await waitInPage(lobby, `the lobby to show ${ROOM} with 2 people`, (room) => document.querySelector(`#room-list li[data-room="${room}"] .count`)?.textContent === "2", ROOM, 8000);
  });

  it("reloading B brings it back into the call", async () => {
    const oldB = pid.B;
    await B.reload();
    await waitInPage(B, "B back in the call with C's video", () => {
      const tiles = [...document.querySelectorAll("#grid .tile:not(.self)")];
      return !document.querySelector("#call").hidden && tiles.length === 1 && tiles[0].querySelector("video").videoWidth > 0;
    }, null, 15_000);
    pid.B = await participantId(B);
    assert.notEqual(pid.B, oldB, "a rejoin is a new participant");
    await expectVideoPlaying(B, REMOTE_CAMERAS, 1);
    await expectAudioArriving(B, [pid.C]);
    await waitInPage(C, "C to show B's new tile only", (ids) => {
      const tiles = [...document.querySelectorAll("#grid .tile:not(.self)")];
      return tiles.length === 1 && tiles[0].dataset.pid === ids.newB && tiles[0].querySelector("video").videoWidth > 0;
    }, { newB: pid.B }, 10_000);
  });

  it("when B's WebSocket or peer connection drops, B reconnects by itself and the call comes back", async () => {
    for (const [how, kill] of [
      ["WebSocket closed", () => window.plaza.ws.close()],
      ["peer connection closed", () => window.plaza.pc.close()],
    ]) {
      const before = await B.evaluate(() => ({ pid: window.plaza.participantId, connections: window.plaza.stats.connections }));
      // Record what the connection indicator shows the user while it happens.
      await B.evaluate(() => {
        const box = document.querySelector("#conn-state");
        window.__seenStates = [box.dataset.state];
        new MutationObserver(() => window.__seenStates.push(box.dataset.state)).observe(box, { attributes: true });
      });
      await B.evaluate(kill);
      await waitInPage(B, `a new connection after: ${how}`, (before) => {
        const s = window.plaza.stats;
        return s.connections > before.connections && s.state === "connected" && window.plaza.participantId !== before.pid;
      }, before, 10_000);
      await waitInPage(B, `C's tile back after: ${how}`, () => {
        const tiles = [...document.querySelectorAll("#grid .tile:not(.self)")];
        return tiles.length === 1 && tiles[0].querySelector("video").videoWidth > 0;
      }, null, 10_000);
      await expectVideoPlaying(B, REMOTE_CAMERAS, 1);
      pid.B = await participantId(B);
      await expectAudioArriving(B, [pid.C]);
      await waitInPage(C, `C to show B again after: ${how}`, (id) => {
        const tiles = [...document.querySelectorAll("#grid .tile:not(.self)")];
        return tiles.length === 1 && tiles[0].dataset.pid === id && tiles[0].querySelector("video").videoWidth > 0;
      }, pid.B, 10_000);
      await expectVideoPlaying(C, REMOTE_CAMERAS, 1);
      await waitInPage(B, "the indicator to say connected", () => document.querySelector("#conn-state").dataset.state === "connected", null, 5000);
      const seen = await B.evaluate(() => window.__seenStates);
      assert.ok(seen.includes("reconnecting"), `the indicator showed the reconnection (${seen.join(" → ")})`);
    }
  });

  it("works on a phone-sized screen: everything fits, no horizontal scrolling", async () => {
    const layout = await C.evaluate(() => {
      const inView = (el) => {
        const r = el.getBoundingClientRect();
        return r.width > 0 && r.left >= 0 && r.right <= innerWidth + 0.5 && r.top >= 0 && r.bottom <= innerHeight + 0.5;
      };
      return {
        scrollWidth: document.documentElement.scrollWidth,
        width: innerWidth,
        buttons: ["#btn-mic", "#btn-cam", "#btn-leave", "#btn-chat", "#btn-people"].map((s) => [s, inView(document.querySelector(s))]),
        tiles: [...document.querySelectorAll("#grid .tile")].map((t) => inView(t)),
      };
    });
    assert.ok(layout.scrollWidth <= layout.width, `no horizontal overflow (${layout.scrollWidth} > ${layout.width})`);
    for (const [sel, ok] of layout.buttons) assert.ok(ok, `${sel} is on screen`);
    assert.ok(layout.tiles.length === 2 && layout.tiles.every(Boolean), "both tiles are on screen");
  });
});
