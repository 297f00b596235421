// The lobby: a room name and a display name, and the rooms that are live right now.

import { $, h, pluralize, validateName } from "./util.js";

const REFRESH_MS = 3000;
const ADJECTIVES = ["amber", "brave", "calm", "clever", "cosy", "eager", "gentle", "golden", "happy", "lucky", "mellow", "quiet", "rapid", "silver", "sunny", "swift", "tidy", "vivid", "witty", "zesty"];
const NOUNS = ["badger", "canyon", "comet", "delta", "falcon", "garden", "harbor", "island", "lagoon", "meadow", "otter", "pepper", "pine", "river", "summit", "tiger", "tulip", "valley", "willow", "zephyr"];

export function randomRoomName() {
  const pick = (list) => list[Math.floor(Math.random() * list.length)];
  return `${pick(ADJECTIVES)}-${pick(NOUNS)}-${Math.floor(10 + Math.random() * 90)}`;
}

export class LobbyView {
  constructor({ onContinue }) {
    this.onContinue = onContinue;
    this.root = $("#lobby");
    this.form = $("#lobby-form");
    this.roomInput = $("#room-input");
    this.nameInput = $("#name-input");
    this.error = $("#lobby-error");
    this.list = $("#room-list");
    this.empty = $("#room-list-empty");
    this.listError = $("#room-list-error");
    this.updated = $("#live-updated");
    this.timer = null;
    this.rooms = [];

    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    $("#random-room").addEventListener("click", () => {
      this.roomInput.value = randomRoomName();
      this.clearError();
      (this.nameInput.value.trim() ? $("#lobby-continue") : this.nameInput).focus();
    });
    for (const input of [this.roomInput, this.nameInput]) input.addEventListener("input", () => this.clearError());
  }

  show({ room = "", name = "" } = {}) {
    this.root.hidden = false;
    document.title = "Plaza";
    if (room) this.roomInput.value = room;
    if (name && !this.nameInput.value) this.nameInput.value = name;
    this.clearError();
    (this.roomInput.value.trim() ? (this.nameInput.value.trim() ? $("#lobby-continue") : this.nameInput) : this.roomInput).focus();
    this.refresh();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  hide() {
    this.root.hidden = true;
    clearInterval(this.timer);
    this.timer = null;
  }

  clearError() {
    this.error.hidden = true;
    this.error.textContent = "";
    this.roomInput.removeAttribute("aria-invalid");
    this.nameInput.removeAttribute("aria-invalid");
  }

  showError(input, text) {
    this.error.textContent = text;
    this.error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }

  submit() {
    const room = this.roomInput.value.trim();
    const name = this.nameInput.value.trim();
    const roomProblem = validateName(room, "room name");
    if (roomProblem) return this.showError(this.roomInput, roomProblem);
    const nameProblem = validateName(name, "name");
    if (nameProblem) return this.showError(this.nameInput, nameProblem);
    this.onContinue({ room, name });
  }

  async refresh() {
    try {
      const response = await fetch("api/rooms", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      this.rooms = Array.isArray(body.rooms) ? body.rooms : [];
      this.listError.hidden = true;
      this.renderRooms();
      this.updated.textContent = `updated ${new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })}`;
    } catch (err) {
      console.warn("plaza: could not list rooms", err);
      this.listError.hidden = false;
    }
  }

  renderRooms() {
    const rooms = [...this.rooms].sort((a, b) => b.participants - a.participants || a.name.localeCompare(b.name));
    this.empty.hidden = rooms.length > 0;
    const items = rooms.map((room) =>
      h(
        "li.room-item",
        { dataset: { room: room.name } },
        h(
          "button.room-btn",
          {
            type: "button",
            title: `Join ${room.name}`,
            onclick: () => {
              this.roomInput.value = room.name;
              this.clearError();
              if (this.nameInput.value.trim()) this.submit();
              else this.nameInput.focus();
            },
          },
          h("span.room-avatar", {}, [...room.name][0]?.toUpperCase() ?? "#"),
          h("span.room-text", {}, h("span.room-name", {}, room.name), h("span.room-count", {}, h("span.count", {}, String(room.participants)), ` ${room.participants === 1 ? "person" : "people"} in the call`)),
          h("span.room-join", {}, "Join"),
        ),
      ),
    );
    this.list.replaceChildren(...items);
    this.list.setAttribute("aria-label", pluralize(rooms.length, "live room"));
  }
}
