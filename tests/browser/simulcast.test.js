// Simulcast and adaptive stream in real Chromium: Ann publishes her camera as three layers;
// Bob gets the layer that fits the size he shows her at, a smaller one when her tile shrinks,
// nothing while it is out of view, and her video back when it returns, without a frozen or
// broken picture at any switch.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  expectVideoPlaying,
  joinThroughLobby,
  launchBrowser,
  openPage,
  participantId,
  startServer,
  waitInPage,
} from "./lib.js";

describe("simulcast", { timeout: 180_000 }, () => {
  let server;
  let browser;
  let A;
  let B;
  let annId;

  before(async () => {
    server = await startServer("server-simulcast");
    browser = await launchBrowser();
    const optIn = `localStorage.setItem("plaza.simulcast", "1");`;
    A = await openPage(browser, "sim-ann", { initScript: optIn });
    B = await openPage(browser, "sim-bob", { initScript: optIn });
    await joinThroughLobby(A, server.base, "layers", "Ann");
    await joinThroughLobby(B, server.base, "layers", "Bob");
    annId = await participantId(A);
  });

  after(async () => {
    await A?.closeAll();
    await B?.closeAll();
    await browser?.close();
    await server?.stop();
  });

  const annTile = () => `#grid .tile[data-pid="${annId}"]`;

  /** The video Bob receives from Ann: frame height, frames decoded and bytes so far. */
  const received = () =>
    B.evaluate(async (annId) => {
      const pc = window.plaza.pc;
      const bindings = window.plaza.recvBindings;
      for (const s of (await pc.getStats()).values()) {
        if (s.type !== "inbound-rtp" || s.kind !== "video") continue;
        if (bindings[s.mid]?.participant_id !== annId) continue;
        return { height: s.frameHeight ?? 0, frames: s.framesDecoded ?? 0, bytes: s.bytesReceived };
      }
      return null;
    }, annId);

  /** Waits until Ann encodes exactly the layers `rids` (dynacast: the server tells her). */
  async function expectAnnEncoding(rids, what, { atLeast = false } = {}) {
    await waitInPage(
      A,
      `Ann to encode ${what}: only [${rids}]`,
      ({ rids, atLeast }) => {
        const sender = window.plaza.pc.getSenders().find((s) => s.track?.kind === "video");
        const active = (sender?.getParameters().encodings ?? []).filter((e) => e.active).map((e) => e.rid);
        if (atLeast) return rids.every((r) => active.includes(r));
        return active.sort().join(",") === [...rids].sort().join(",");
      },
      { rids, atLeast },
      10_000,
    );
  }

  /** Waits until Bob decodes Ann's video at `test(height)`, still playing afterwards. */
  async function expectHeight(what, [min, max], timeout = 20_000) {
    await waitInPage(
      B,
      `Ann's video decoded at ${what}`,
      async ({ annId, min, max }) => {
        const pc = window.plaza.pc;
        const bindings = window.plaza.recvBindings;
        for (const s of (await pc.getStats()).values()) {
          if (s.type !== "inbound-rtp" || s.kind !== "video") continue;
          if (bindings[s.mid]?.participant_id !== annId) continue;
          const h = s.frameHeight ?? 0;
          return h >= min && h <= max;
        }
        return false;
      },
      { annId, min, max },
      timeout,
    );
    await expectVideoPlaying(B, annTile(), 1, { minFrames: 10, timeout: 5000 });
  }

  it("publishes the camera as three layers, each encoded", async () => {
    await waitInPage(
      A,
      "three outbound video encodings (q, h, f) each encoding frames",
      async () => {
        const rids = {};
        for (const s of (await window.plaza.pc.getStats()).values()) {
          if (s.type === "outbound-rtp" && s.kind === "video" && s.rid) rids[s.rid] = s.framesEncoded ?? 0;
        }
        return ["q", "h", "f"].every((r) => rids[r] > 10);
      },
      null,
      20_000,
    );
  });

  it("sends a large tile a large layer and a small tile the small one, switching cleanly", async () => {
    // 1280x720 with two people: Ann's tile is far taller than the 135 px quarter layer.
    await expectHeight("a layer taller than the quarter one", [136, 10_000]);
    const large = (await received()).height;
    // Shrink Bob's window: Ann's tile becomes small, the server moves Bob to the small layer.
    await B.setViewportSize({ width: 360, height: 300 });
    await expectHeight("the quarter layer (135 px)", [1, 135]);
    await expectAnnEncoding(["q"], "the quarter layer alone, since nobody shows her large");
    await B.setViewportSize({ width: 1280, height: 720 });
    await expectHeight(`the large layer again (${large} px)`, [large, 10_000]);
    await expectAnnEncoding(["q", "h"], "the layer Bob shows again", { atLeast: true });
    const loss = await B.evaluate(async () => {
      let nacks = 0;
      let plis = 0;
      for (const s of (await window.plaza.pc.getStats()).values()) {
        if (s.type === "inbound-rtp" && s.kind === "video") {
          nacks += s.nackCount ?? 0;
          plis += s.pliCount ?? 0;
        }
      }
      return { nacks, plis };
    });
    // A switch at a keyframe needs no repair: a switch mid-stream would show as picture loss.
    assert.ok(loss.plis <= 2, `Bob asked for keyframes ${loss.plis} times across the switches`);
  });

  it("sends nothing for a tile out of view, and resumes when it is back", async () => {
    await B.evaluate((sel) => {
      document.querySelector(sel).style.transform = "translateX(-10000px)";
    }, annTile());
    // Nothing arrives once the server has heard (allow what was in flight).
    let settled = null;
    await waitInPage(
      B,
      "Ann's video to stop arriving while her tile is out of view",
      async ({ annId }) => {
        const pc = window.plaza.pc;
        const bindings = window.plaza.recvBindings;
        for (const s of (await pc.getStats()).values()) {
          if (s.type !== "inbound-rtp" || s.kind !== "video") continue;
          if (bindings[s.mid]?.participant_id !== annId) continue;
          const now = { bytes: s.bytesReceived, at: performance.now() };
          const last = (window.__last ??= now);
          if (now.bytes !== last.bytes) {
            window.__last = now;
            return false;
          }
          return now.at - last.at > 1500; // no byte for 1.5 s
        }
        return false;
      },
      { annId },
      15_000,
    );
    settled = await received();
    await expectAnnEncoding([], "nothing, since nobody shows her video");
    await B.evaluate((sel) => {
      document.querySelector(sel).style.transform = "";
    }, annTile());
    await expectVideoPlaying(B, annTile(), 1, { minFrames: 20, timeout: 8000 });
    const after = await received();
    assert.ok(after.bytes > settled.bytes, "video flows again");
  });
});
