// A server restart is survived: the server says `server-shutdown` and goes away, the page shows
// that it is reconnecting, and once the server is back the call comes back by itself.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  expectVideoPlaying,
  failingMedia,
  joinThroughLobby,
  launchBrowser,
  openPage,
  participantId,
  screenshot,
  startServer,
  waitInPage,
} from "./lib.js";

describe("server restart", { timeout: 90_000 }, () => {
  let server;
  let browser;
  let Z, L; // Zoe publishes her camera; Leo listens

  before(async () => {
    server = await startServer("server-restart");
    browser = await launchBrowser();
    Z = await openPage(browser, "zoe");
    L = await openPage(browser, "leo", { initScript: failingMedia("NotFoundError") });
  });

  after(async () => {
    for (const page of [Z, L]) await page?.closeAll();
    await browser?.close();
    await server?.stop();
  });

  it("the call comes back by itself once the server is back", async () => {
    await joinThroughLobby(Z, server.base, "restart", "Zoe");
    await joinThroughLobby(L, server.base, "restart", "Leo");
    await expectVideoPlaying(L, "#grid .tile:not(.self)", 1, { timeout: 8000 });
    // (Ids start again at p1 in a new server process, so count connections instead.)
    const connections = async (page) => page.evaluate(() => window.plaza.stats.connections);
    const before = { Z: await connections(Z), L: await connections(L) };

    // SIGTERM: the server tells everyone `server-shutdown`, drains and exits. Then a fresh
    // process comes back on the same address (new ids, new media port).
    const listen = server.listen;
    await server.stop();
    for (const page of [Z, L]) {
      await waitInPage(page, "the page to show that it is reconnecting", () => document.querySelector("#conn-state").dataset.state === "reconnecting", null, 5000);
    }
    await screenshot(L, "call-reconnecting");
    server = await startServer("server-restart", {}, { listen });

    for (const [page, old] of [[Z, before.Z], [L, before.L]]) {
      await waitInPage(page, "a rejoin on the restarted server", (old) => window.plaza.stats.state === "connected" && window.plaza.stats.connections > old, old, 20_000);
    }
    await expectVideoPlaying(L, "#grid .tile:not(.self)", 1, { timeout: 10_000 });
    const leo = await participantId(L);
    await waitInPage(Z, "Leo's tile back on Zoe's page", (id) => !!document.querySelector(`#grid .tile[data-pid="${id}"]`), leo, 5000);
    assert.equal(await L.evaluate(() => document.querySelector("#call-banner").hidden), true, "the banner is gone");
  });
});
