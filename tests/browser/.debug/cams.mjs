import { startServer, launchBrowser, openPage } from "../lib.js";
const server = await startServer("server-debug");
const browser = await launchBrowser();
const A = await openPage(browser, "dA");
try {
await A.goto(server.base);
console.log(await A.evaluate(async () => {
  const frames = async (track) => { const v = document.createElement("video"); v.muted = true; v.srcObject = new MediaStream([track]); document.body.append(v); await v.play(); await new Promise(r => setTimeout(r, 1500)); const n = v.getVideoPlaybackQuality().totalVideoFrames; v.remove(); return n; };
  const out = [];
  const s0 = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 960 }, height: { ideal: 540 }, frameRate: { ideal: 24, max: 30 } } });
  const t0 = s0.getVideoTracks()[0];
  out.push(["t0", t0.label, await frames(t0)]);
  const devs = (await navigator.mediaDevices.enumerateDevices()).filter(d => d.kind === "videoinput");
  const s1 = await navigator.mediaDevices.getUserMedia({ video: { deviceId: { exact: devs[1].deviceId }, width: { ideal: 960 }, height: { ideal: 540 }, frameRate: { ideal: 24, max: 30 } } });
  const t1 = s1.getVideoTracks()[0];
  out.push(["t1 while t0 open", t1.label, await frames(t1)]);
  t0.stop();
  out.push(["t1 after t0 stop", t1.label, await frames(t1)]);
  const s2 = await navigator.mediaDevices.getUserMedia({ video: { deviceId: { exact: devs[1].deviceId } } });
  out.push(["t2 plain dev1", await frames(s2.getVideoTracks()[0])]);
  return JSON.stringify(out);
}));
} finally { await browser.close(); await server.stop(); }
