// Small DOM and formatting helpers shared by the views.

/** Creates an element: h("div.tile.self", {dataset: {pid: "p1"}, onclick}, child, "text"). */
export function h(spec, props = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (key === "html") el.innerHTML = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** "Ada Lovelace" -> "AL", "bob" -> "B", "" -> "?". */
export function initials(name) {
  const words = String(name ?? "").trim().split(/\s+/u).filter(Boolean);
  if (!words.length) return "?";
  const first = [...words[0]][0] ?? "";
  const last = words.length > 1 ? [...words[words.length - 1]][0] ?? "" : "";
  return (first + last).toUpperCase();
}

/** A stable, pleasant hue for a name, so a person keeps the same avatar colour everywhere. */
export function hueFor(name) {
  let hash = 0;
  for (const ch of String(name ?? "")) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

export function formatTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** Number of Unicode characters (what the server counts), not UTF-16 units. */
export const charCount = (s) => [...s].length;

export function hasControlChars(s) {
  return /[\u0000-\u001f\u007f-\u009f]/u.test(s);
}

/** Validates a room or display name the way the server does; returns an error text or "". */
export function validateName(value, what, max = 64) {
  const trimmed = value.trim();
  if (!trimmed) return `Enter a ${what}.`;
  if (charCount(trimmed) > max) return `The ${what} can have at most ${max} characters.`;
  if (hasControlChars(trimmed)) return `The ${what} cannot contain control characters.`;
  return "";
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A tiny typed event emitter. */
export class Emitter {
  #handlers = new Map();
  on(type, fn) {
    if (!this.#handlers.has(type)) this.#handlers.set(type, new Set());
    this.#handlers.get(type).add(fn);
    return () => this.#handlers.get(type)?.delete(fn);
  }
  emit(type, detail) {
    for (const fn of this.#handlers.get(type) ?? []) {
      try {
        fn(detail);
      } catch (err) {
        console.error(`plaza: ${type} handler failed`, err);
      }
    }
  }
}

export function pluralize(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}
