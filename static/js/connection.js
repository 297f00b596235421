// One attempt at being in a call: one WebSocket, one `join`, one RTCPeerConnection.
//
// It speaks Plaza's signalling protocol (docs/protocol.md) exactly: the server is the only
// offerer; every server message is handled strictly in order (a promise chain), so a candidate
// is never applied before the offer it belongs to; each offer's `send` bindings get their local
// track attached with replaceTrack on the transceiver with that mid before answering; `recv`
// bindings are recorded before applying the offer, so `track` events can be mapped to their
// participant. The server reuses m-lines: a mid whose binding names another track than before
// carries that track from this offer on, on the same receiver (its MediaStreamTrack is the same
// object), and the browser fires no `track` event when the m-line stayed active, so each offer's
// table is compared with what was emitted. A Connection never reconnects: when it ends it emits "closed" once and the Call
// decides what to do (a rejoin is a fresh Connection).

import { Emitter } from "./util.js";

export const PROTOCOL_VERSION = 1;
const PING_INTERVAL_MS = 10_000;

/** Simulcast layers as the server's rids name them: quarter, half and full resolution. */
const SIMULCAST_LAYERS = {
  q: { scaleResolutionDownBy: 4, maxBitrate: 150_000, maxFramerate: 15 },
  h: { scaleResolutionDownBy: 2, maxBitrate: 500_000, maxFramerate: 30 },
  f: { scaleResolutionDownBy: 1, maxBitrate: 1_500_000, maxFramerate: 30 },
};

export class Connection extends Emitter {
  /**
   * @param {object} opts
   * @param {string} opts.url        WebSocket URL of /ws
   * @param {string} opts.room
   * @param {string} opts.name
   * @param {Array<{cid,kind,source,muted}>} opts.publish  tracks to publish with the join
   * @param {(cid: string) => MediaStreamTrack|null} opts.localTrack  the track to send for a cid
   */
  constructor({ url, room, name, publish, localTrack }) {
    super();
    this.url = url;
    this.room = room;
    this.name = name;
    this.initialPublish = publish;
    this.localTrack = localTrack;
    this.ws = null;
    this.pc = null;
    this.participantId = null;
    this.joined = false;
    this.closed = false;
    this.recvByMid = new Map(); // mid -> recv binding of the latest offer
    this.sendByCid = new Map(); // cid -> send binding of the latest offer
    this.emittedByMid = new Map(); // mid -> track_id last emitted as "track" for it
    this.stats = { offers: 0, answers: 0, candidatesIn: 0, candidatesOut: 0, errors: 0 };
    this.rttMs = null;
    this.queue = Promise.resolve();
    this.pingTimer = null;
    this.pingId = 0;
    this.pingSent = new Map();
    this.localStream = new MediaStream();
  }

  open() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.send({ type: "join", version: PROTOCOL_VERSION, room: this.room, name: this.name, publish: this.initialPublish });
      this.pingTimer = setInterval(() => this.ping(), PING_INTERVAL_MS);
    };
    ws.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        console.warn("plaza: ignoring a non-JSON message");
        return;
      }
      this.queue = this.queue
        .then(() => (this.closed ? undefined : this.handle(msg)))
        .catch((err) => {
          console.error(`plaza: handling ${msg.type} failed`, err);
          // A failed negotiation leaves the peer connection unusable: start over.
          if (msg.type === "offer") this.close(`negotiation failed: ${err?.message ?? err}`);
        });
    };
    ws.onerror = () => {}; // onclose follows with the details
    ws.onclose = (event) =>
      this.close(this.joined ? (event.code === 1000 ? "the server ended the session" : "lost the connection to the server") : "could not reach the server");
  }

  send(msg) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  ping() {
    const id = ++this.pingId;
    this.pingSent.set(id, performance.now());
    if (this.pingSent.size > 8) this.pingSent.delete(this.pingSent.keys().next().value);
    this.send({ type: "ping", id });
  }

  async handle(msg) {
    switch (msg.type) {
      case "joined":
        this.joined = true;
        this.joinedAt = performance.now();
        this.participantId = msg.participant_id;
        this.createPeerConnection(msg.ice_servers ?? []);
        this.emit("joined", msg);
        this.ping();
        break;
      case "offer":
        await this.applyOffer(msg);
        break;
      case "candidate":
        this.stats.candidatesIn++;
        if (msg.candidate && msg.candidate.candidate && this.pc) {
          try {
            await this.pc.addIceCandidate(msg.candidate);
          } catch (err) {
            console.warn("plaza: could not add a server candidate", err);
          }
        }
        break;
      case "track-layers":
        await this.setActiveLayers(msg.track_id, msg.rids ?? []);
        break;
      case "pong": {
        const sentAt = this.pingSent.get(msg.id);
        if (sentAt !== undefined) {
          this.rttMs = performance.now() - sentAt;
          this.pingSent.delete(msg.id);
          this.emit("rtt", this.rttMs);
        }
        break;
      }
      case "error":
        this.stats.errors++;
        console.warn(`plaza: server error ${msg.code}: ${msg.message}`, msg.request ?? "");
        this.emit("server-error", msg);
        break;
      case "participant-joined":
      case "participant-left":
      case "track-published":
      case "track-unpublished":
      case "track-muted":
      case "chat":
      case "server-shutdown":
        this.emit(msg.type, msg);
        break;
      default:
        // Unknown message types are ignored, as the protocol requires.
        break;
    }
  }

  createPeerConnection(iceServers) {
    const pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    this.pc = pc;
    pc.onicecandidate = (event) => {
      this.stats.candidatesOut++;
      this.send({ type: "candidate", candidate: event.candidate ? event.candidate.toJSON() : null });
    };
    pc.ontrack = (event) => {
      const binding = this.recvByMid.get(event.transceiver.mid);
      if (binding) this.emitTrack(binding, event.transceiver);
    };
    pc.onnegotiationneeded = null; // the server is the only offerer
    pc.onconnectionstatechange = () => this.emit("pc-state", pc.connectionState);
  }

  async applyOffer(msg) {
    if (!this.pc) throw new Error("offer before joined");
    this.stats.offers++;
    this.emit("offer-received", msg);
    // Record the bindings first: `track` events fire during setRemoteDescription.
    this.recvByMid = new Map();
    this.sendByCid = new Map();
    for (const binding of msg.mids ?? []) {
      if (binding.direction === "recv") this.recvByMid.set(binding.mid, binding);
      else if (binding.direction === "send") this.sendByCid.set(binding.cid, binding);
    }
    await this.pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    // Reused m-lines that stayed active fired no `track` event: their new tracks start here.
    for (const binding of this.recvByMid.values()) {
      if (this.emittedByMid.get(binding.mid) === binding.track_id) continue;
      const transceiver = this.pc.getTransceivers().find((t) => t.mid === binding.mid);
      if (transceiver?.receiver.track) this.emitTrack(binding, transceiver);
    }
    for (const binding of this.sendByCid.values()) {
      const transceiver = this.pc.getTransceivers().find((t) => t.mid === binding.mid);
      if (!transceiver) continue;
      transceiver.direction = "sendonly";
      const track = this.localTrack(binding.cid);
      if (transceiver.sender.track !== track) await transceiver.sender.replaceTrack(track);
      if (track) transceiver.sender.setStreams?.(this.localStream);
    }
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    if (this.closed) return;
    for (const binding of this.sendByCid.values()) {
      const transceiver = this.pc.getTransceivers().find((t) => t.mid === binding.mid);
      if (transceiver) await this.configureLayers(transceiver.sender);
    }
    this.send({ type: "answer", sdp: this.pc.localDescription.sdp });
    this.stats.answers++;
    this.emit("offer-applied", { recv: [...this.recvByMid.values()], send: [...this.sendByCid.values()] });
  }

  /**
   * Sizes and bitrates of simulcast layers, by the rids the server offers (smallest first).
   * Without this the browser picks its own ladder, which differs between versions.
   */
  async configureLayers(sender) {
    const params = sender.getParameters();
    const encodings = params.encodings ?? [];
    if (encodings.length < 2 || sender.plazaLayersSet) return;
    let changed = false;
    for (const e of encodings) {
      const layer = SIMULCAST_LAYERS[e.rid];
      if (!layer) continue;
      Object.assign(e, layer);
      changed = true;
    }
    if (!changed) return;
    try {
      await sender.setParameters(params);
      sender.plazaLayersSet = true;
    } catch (err) {
      console.warn("cannot configure simulcast layers", err);
    }
  }

  /**
   * Dynacast: encodes only the simulcast layers someone receives (the server says which), so
   * that a camera nobody watches large costs neither upload nor CPU.
   */
  async setActiveLayers(trackId, rids) {
    const binding = [...this.sendByCid.values()].find((b) => b.track_id === trackId);
    const transceiver = binding && this.pc?.getTransceivers().find((t) => t.mid === binding.mid);
    if (!transceiver) return;
    const sender = transceiver.sender;
    const params = sender.getParameters();
    if ((params.encodings ?? []).length < 2) return;
    let changed = false;
    for (const e of params.encodings) {
      const active = rids.includes(e.rid);
      if (e.active !== active) {
        e.active = active;
        changed = true;
      }
    }
    this.stats.activeLayers = rids.join(",");
    if (!changed) return;
    try {
      await sender.setParameters(params);
    } catch (err) {
      console.warn("plaza: cannot pause or resume simulcast layers", err);
    }
  }

  /** Announces that `transceiver` now carries the track `binding` names (once per binding). */
  emitTrack(binding, transceiver) {
    if (this.emittedByMid.get(binding.mid) === binding.track_id) return;
    this.emittedByMid.set(binding.mid, binding.track_id);
    this.emit("track", { binding, track: transceiver.receiver.track, transceiver });
  }

  /** The server's track id for one of our cids, once an offer has bound it. */
  trackIdFor(cid) {
    return this.sendByCid.get(cid)?.track_id ?? null;
  }

  /** Swaps the track sent for `cid` without any signalling (RTCRtpSender.replaceTrack). */
  async replaceTrack(cid, track) {
    const binding = this.sendByCid.get(cid);
    if (!binding || !this.pc) return false;
    const transceiver = this.pc.getTransceivers().find((t) => t.mid === binding.mid);
    if (!transceiver) return false;
    await transceiver.sender.replaceTrack(track);
    return true;
  }

  publish(tracks) {
    return this.send({ type: "publish", tracks });
  }

  unpublish(cid) {
    const trackId = this.trackIdFor(cid);
    if (trackId) this.send({ type: "unpublish", track_id: trackId });
    return trackId;
  }

  mute(cid, muted) {
    const trackId = this.trackIdFor(cid);
    if (trackId) this.send({ type: "mute", track_id: trackId, muted });
    return trackId;
  }

  chat(text, to = null) {
    return this.send(to ? { type: "chat", text, to } : { type: "chat", text });
  }

  /** Leaves cleanly: the server tells the others "left" and closes the socket. */
  leave() {
    if (this.joined) this.send({ type: "leave" });
    this.close("left", { quiet: true });
  }

  /** Ends this attempt: closes the socket and the peer connection; emits "closed" once. */
  close(reason = "closed", { quiet = false } = {}) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    const ws = this.ws;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      ws.onopen = () => ws.close(1000);
      // After `leave`, let the server close the socket so the message is not lost.
      if (ws.readyState === WebSocket.OPEN && !quiet) ws.close(1000);
      else if (ws.readyState === WebSocket.OPEN) setTimeout(() => ws.close(1000), 1000);
    }
    if (this.pc) {
      this.pc.onicecandidate = this.pc.ontrack = this.pc.onconnectionstatechange = null;
      try {
        this.pc.close();
      } catch {
        /* already closed */
      }
    }
    this.emit("closed", { reason, quiet, joined: this.joined });
  }
}
