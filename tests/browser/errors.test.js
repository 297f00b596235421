// Errors from the server are shown to the user: a join the server refuses ends on a clear
// screen with a way to try again. (Listen-only pages: no camera, so this test is cheap.)

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { failingMedia, joinThroughLobby, launchBrowser, openPage, screenshot, startServer, waitInPage } from "./lib.js";

describe("server errors", { timeout: 60_000 }, () => {
  let server;
  let browser;
  let X, Y;

  before(async () => {
    server = await startServer("server-errors", { PLAZA_LIMITS__MAX_PARTICIPANTS_PER_ROOM: "1" });
    browser = await launchBrowser();
    X = await openPage(browser, "xavier", { initScript: failingMedia("NotFoundError") });
    Y = await openPage(browser, "yara", { initScript: failingMedia("NotFoundError") });
  });

  after(async () => {
    for (const page of [X, Y]) await page?.closeAll();
    await browser?.close();
    await server?.stop();
  });

  it("a full room is explained, and trying again works once there is space", async () => {
    await joinThroughLobby(X, server.base, "tiny", "Xavier");
    await waitInPage(X, "X to be connected", () => window.plaza.stats.state === "connected", null, 5000);
    await joinThroughLobby(Y, server.base, "tiny", "Yara", { expectCall: false });
    await Y.waitForSelector("#ended:not([hidden])", { timeout: 5000 });
    assert.equal(await Y.textContent("#ended-title"), "Could not join the call");
    assert.match(await Y.textContent("#ended-text"), /room is full/i);
    await screenshot(Y, "join-refused");

    await X.click("#btn-leave");
    await X.waitForSelector("#ended:not([hidden])");
    await Y.click("#rejoin-btn");
    await Y.waitForSelector("#prejoin:not([hidden])");
    await waitInPage(Y, "the pre-join screen to be ready", () => !document.querySelector("#join-btn").disabled, null, 10_000);
    await Y.click("#join-btn");
    await waitInPage(Y, "Y to be in the call", () => window.plaza.stats.state === "connected" && !document.querySelector("#call").hidden, null, 5000);
  });
});
