// Short-lived notices at the bottom of the screen ("Ann joined", "Link copied").

import { $, h } from "./util.js";
import { icon } from "./icons.js";

const ICONS = { join: "users", leave: "users", screen: "screen", error: "alert", ok: "check", info: "check", chat: "chat" };
const MAX_VISIBLE = 4;

export function toast(text, { kind = "info", timeout = 4000, onclick } = {}) {
  const box = $("#toasts");
  const el = h(
    "div.toast",
    { dataset: { kind }, role: kind === "error" ? "alert" : "status", onclick },
    h("span.toast-icon", { html: icon(ICONS[kind] ?? "check", 16) }),
    h("span.toast-text", {}, text),
  );
  if (onclick) el.classList.add("clickable");
  box.append(el);
  while (box.children.length > MAX_VISIBLE) box.firstElementChild.remove();
  requestAnimationFrame(() => el.classList.add("in"));
  setTimeout(() => {
    el.classList.remove("in");
    el.classList.add("out");
    setTimeout(() => el.remove(), 300);
  }, timeout);
  return el;
}
