import { startServer, launchBrowser, openPage, joinThroughLobby, waitInPage } from "../lib.js";
const server = await startServer("server-debug");
const browser = await launchBrowser();
const A = await openPage(browser, "dA"), B = await openPage(browser, "dB");
try {
await joinThroughLobby(A, server.base, "dbg", "A");
await joinThroughLobby(B, server.base, "dbg", "B");
await waitInPage(B, "tile", () => document.querySelector("#grid .tile:not(.self) video")?.videoWidth > 0, null, 8000);
const stat = async () => ({
  A: await A.evaluate(async () => { const r = []; for (const s of (await window.plaza.pc.getStats()).values()) if (s.type === "outbound-rtp" && s.kind === "video") r.push({fe: s.framesEncoded, fs: s.framesSent, w: s.frameWidth, kf: s.keyFramesEncoded, pli: s.pliCount, bytes: s.bytesSent, lim: s.qualityLimitationReason, enc: s.encoderImplementation}); return r; }),
  B: await B.evaluate(async () => { const r = []; for (const s of (await window.plaza.pc.getStats()).values()) if (s.type === "inbound-rtp" && s.kind === "video") r.push({fd: s.framesDecoded, fr: s.framesReceived, kf: s.keyFramesDecoded, pli: s.pliCount, nack: s.nackCount, lost: s.packetsLost, pr: s.packetsReceived, w: s.frameWidth}); const v = document.querySelector("#grid .tile:not(.self) video"); r.push({vf: v.getVideoPlaybackQuality().totalVideoFrames, vw: v.videoWidth}); return r; }),
});
console.log("before", JSON.stringify(await stat()));
await A.click("#btn-settings-2");
const cams = await A.$$eval("#set-camera option", os => os.map(o => o.value));
await A.selectOption("#set-camera", cams[1]);
for (let i = 0; i < 6; i++) { await new Promise(r => setTimeout(r, 1000)); console.log(i, JSON.stringify(await stat()), await A.evaluate(() => { const t = window.plaza.call.local.cam.track; return [t.label, t.readyState, t.muted, JSON.stringify(t.getSettings().width)]; })); }
} finally { await browser.close(); await server.stop(); }
