//! The forwarding core: who gets which packet, with which sequence numbers, and when to ask a
//! publisher for a keyframe. No I/O, no async, no WebRTC types: inputs are method calls with the
//! current time passed in, outputs are values drained with [`Router::poll_output`].
//!
//! One `Router` per room, owned by the room task. A producer is a published track; a consumer is
//! one subscriber's copy of it. Consumers start `Pending` (their transport is not ready), become
//! `AwaitingKeyframe` (video) or `Forwarding` (audio) when the subscriber is ready, and fall back
//! to `AwaitingKeyframe` when the publisher switches to a new source, so a subscriber never gets a
//! stream it cannot decode. A packet lost on the way out is repaired by NACK, not by a restart.

pub mod allocator;
pub mod codec;
pub mod compact;
pub mod dynacast;
pub mod history;
pub mod ids;
pub mod packet;
pub mod repair;
pub mod rewrite;
pub mod simulcast;
pub mod vp8;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use codec::{Codec, MediaKind};
pub use ids::{IdAllocator, ParticipantId, TrackId};
pub use packet::RtpPacket;
pub use rewrite::Continuation;
use rewrite::SeqTsRewriter;

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// At most one keyframe request per producer in this interval.
    pub keyframe_request_interval: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            keyframe_request_interval: Duration::from_millis(500),
        }
    }
}

/// The shortest time between two keyframe requests for one track when the first was answered
/// and a subscriber that became ready since still waits (see
/// [`Router::next_keyframe_request_at`]).
const ANSWERED_REQUEST_FLOOR: Duration = Duration::from_millis(100);

/// What the room must do after feeding the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this packet (already rewritten) to the subscriber's copy of `track`.
    Rtp {
        subscriber: ParticipantId,
        track: TrackId,
        kind: MediaKind,
        packet: RtpPacket,
    },
    /// Ask the publisher of `track` for a keyframe on the stream `ssrc`.
    RequestKeyframe {
        publisher: ParticipantId,
        track: TrackId,
        ssrc: u32,
    },
    /// Dynacast: the publisher of simulcast `track` need send only its layers up to
    /// `max_layer`, or none (`None`: nobody receives any).
    LayersWanted {
        publisher: ParticipantId,
        track: TrackId,
        max_layer: Option<u8>,
    },
}

/// Why a packet was not forwarded to one consumer; counted, never logged per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The subscriber's transport is not connected yet.
    NotReady,
    /// Video waits for a keyframe the subscriber can start decoding from.
    AwaitingKeyframe,
    /// Older than the current source's start (a late retransmission across a switch).
    Stale,
    /// The packet was for a track nobody publishes (any more).
    UnknownTrack,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::NotReady,
        DropReason::AwaitingKeyframe,
        DropReason::Stale,
        DropReason::UnknownTrack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotReady => "not_ready",
            DropReason::AwaitingKeyframe => "awaiting_keyframe",
            DropReason::Stale => "stale",
            DropReason::UnknownTrack => "unknown_track",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsumerState {
    Pending,
    AwaitingKeyframe,
    Forwarding,
    /// The subscriber asked for nothing (its tile is hidden): nothing is sent.
    Paused,
}

/// The most spatial layers a producer has (simulcast: three).
pub const MAX_LAYERS: u8 = 3;

/// A layer that sent nothing for this long is gone (the publisher stopped it, or its uplink
/// can no longer carry it): its consumers move to another.
const LAYER_SILENCE: Duration = Duration::from_millis(1500);

#[derive(Debug)]
struct Consumer {
    subscriber: ParticipantId,
    state: ConsumerState,
    rewriter: SeqTsRewriter,
    /// The layer forwarded now (meaningful while `Forwarding`).
    layer: u8,
    /// The layer to move to at its next keyframe.
    target: u8,
    /// The highest layer this subscriber wants.
    max_layer: u8,
    /// The subscriber wants nothing for now (its tile is hidden).
    hidden: bool,
    /// How tall the subscriber shows the video, in pixels (`None`: not said); no layer much
    /// taller than that is sent.
    shown_height: Option<u16>,
    /// VP8 picture ids and TL0PICIDX kept continuous across layer switches (each layer
    /// counts on its own; a decoder drops a keyframe whose picture id goes backwards).
    vp8: Option<vp8::Vp8Munger>,
}

impl Consumer {
    /// The next packet forwarded starts a new source (a keyframe after a switch or a pause).
    fn restart(&mut self) {
        self.rewriter.reset_source();
        if let Some(m) = &mut self.vp8 {
            m.reset_source();
        }
    }
}

/// One spatial layer of a producer: its own stream, with its own keyframe requests.
#[derive(Debug, Default)]
struct Layer {
    ssrc: Option<u32>,
    last_packet_at: Option<Instant>,
    /// The picture height its last keyframe declared (VP8), when known.
    height: Option<u16>,
    last_keyframe_request_at: Option<Instant>,
    /// A keyframe arrived after the last request.
    keyframe_request_answered: bool,
    /// A request was throttled (or not yet possible) and is still owed.
    keyframe_request_owed: bool,
}

impl Layer {
    fn alive(&self, now: Instant) -> bool {
        self.last_packet_at
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_SILENCE)
    }
}

#[derive(Debug)]
struct Producer {
    publisher: ParticipantId,
    kind: MediaKind,
    codec: Codec,
    clock_rate: u32,
    /// Spatial layers, lowest first; one unless the publisher sends simulcast.
    layers: Vec<Layer>,
    consumers: Vec<Consumer>,
    /// The layers last said to be wanted (dynacast); `None` until first said.
    announced_demand: Option<Option<u8>>,
}

impl Producer {
    /// The highest layer worth sending to a consumer: within its own limit, and no taller
    /// than needed for the size it shows the video at.
    fn useful_max(&self, c: &Consumer) -> u8 {
        let Some(shown) = c.shown_height else {
            return c.max_layer;
        };
        // A layer at least ~90 % of the shown height looks sharp; unknown heights are taken
        // as a browser's default simulcast ladder (180p, 360p, 720p).
        let height = |i: usize| {
            self.layers
                .get(i)
                .and_then(|l| l.height)
                .unwrap_or(180 << i)
        };
        let enough = (0..self.layers.len().max(1))
            .find(|&i| u32::from(height(i)) * 10 >= u32::from(shown) * 9)
            .unwrap_or(self.layers.len().saturating_sub(1));
        c.max_layer.min(enough as u8)
    }

    /// The highest layer any consumer may want: ready ones by their limits, pending ones
    /// anything (they are about to start).
    fn demand(&self) -> Option<u8> {
        self.consumers
            .iter()
            .filter(|c| !c.hidden)
            .map(|c| self.useful_max(c))
            .max()
    }

    fn awaiting_keyframe_on(&self, layer: u8) -> bool {
        self.consumers.iter().any(|c| {
            c.target == layer
                && (c.state == ConsumerState::AwaitingKeyframe
                    || (c.state == ConsumerState::Forwarding && c.layer != layer))
        })
    }

    /// The layer a consumer wanting at most `max` should get: the highest live layer up to
    /// `max`, else the lowest live one above it, else `max` itself (nothing live yet).
    fn best_layer(&self, max: u8, now: Instant) -> u8 {
        let live = |l: &u8| {
            self.layers
                .get(*l as usize)
                .is_some_and(|layer| layer.alive(now))
        };
        (0..=max)
            .rev()
            .find(live)
            .or_else(|| (max + 1..MAX_LAYERS).find(live))
            .unwrap_or_else(|| max.min(self.layers.len().saturating_sub(1) as u8))
    }
}

#[derive(Debug, Default)]
pub struct Router {
    config: RouterConfig,
    producers: HashMap<TrackId, Producer>,
    outputs: VecDeque<Output>,
    drops: HashMap<DropReason, u64>,
    /// A producer's layer started since demand was last refreshed.
    layers_appeared: bool,
}

impl Router {
    pub fn new(config: RouterConfig) -> Self {
        Self {
            config,
            ..Default::default()
        }
    }

    pub fn add_producer(
        &mut self,
        track: TrackId,
        publisher: ParticipantId,
        kind: MediaKind,
        codec: Codec,
        clock_rate: u32,
    ) {
        self.producers.insert(
            track,
            Producer {
                publisher,
                kind,
                codec,
                clock_rate,
                layers: vec![Layer::default()],
                consumers: Vec::new(),
                announced_demand: None,
            },
        );
    }

    /// Removes a producer; returns the subscribers that were consuming it.
    pub fn remove_producer(&mut self, track: TrackId) -> Vec<ParticipantId> {
        self.end_producer(track)
            .into_iter()
            .map(|(subscriber, _)| subscriber)
            .collect()
    }

    /// Removes a producer; returns each subscriber that was consuming it with where its copy
    /// of the stream ended, for a consumer that later reuses the same outgoing stream
    /// ([`Self::continue_consumer`]).
    pub fn end_producer(&mut self, track: TrackId) -> Vec<(ParticipantId, Continuation)> {
        self.producers
            .remove(&track)
            .map(|p| {
                p.consumers
                    .into_iter()
                    .map(|c| (c.subscriber, c.rewriter.continuation()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The subscriber receives `track` on an outgoing stream that carried another track
    /// before (a recycled transceiver): its sequence numbers and timestamps go on from where
    /// that one ended. Call before [`Self::handle_consumer_ready`].
    pub fn continue_consumer(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        from: Continuation,
    ) {
        let consumer = self
            .producers
            .get_mut(&track)
            .and_then(|p| p.consumers.iter_mut().find(|c| c.subscriber == subscriber));
        if let Some(c) = consumer {
            c.rewriter.continue_from(from);
        }
    }

    /// Adds `subscriber` as a consumer of `track`, paused until [`Self::handle_consumer_ready`].
    /// Returns false when the track does not exist or is the subscriber's own.
    pub fn add_consumer(&mut self, subscriber: ParticipantId, track: TrackId) -> bool {
        let Some(p) = self.producers.get_mut(&track) else {
            return false;
        };
        if p.publisher == subscriber || p.consumers.iter().any(|c| c.subscriber == subscriber) {
            return false;
        }
        p.consumers.push(Consumer {
            subscriber,
            state: ConsumerState::Pending,
            rewriter: SeqTsRewriter::new(p.clock_rate),
            layer: 0,
            target: 0,
            max_layer: MAX_LAYERS - 1,
            hidden: false,
            shown_height: None,
            vp8: (p.codec == Codec::Vp8).then(vp8::Vp8Munger::new),
        });
        true
    }

    pub fn remove_consumer(&mut self, subscriber: ParticipantId, track: TrackId) {
        if let Some(p) = self.producers.get_mut(&track) {
            p.consumers.retain(|c| c.subscriber != subscriber);
        }
    }

    /// Removes everything a participant publishes or consumes; returns the tracks it published.
    pub fn remove_participant(&mut self, participant: ParticipantId) -> Vec<TrackId> {
        let owned: Vec<TrackId> = self
            .producers
            .iter()
            .filter(|(_, p)| p.publisher == participant)
            .map(|(t, _)| *t)
            .collect();
        for track in &owned {
            self.producers.remove(track);
        }
        for p in self.producers.values_mut() {
            p.consumers.retain(|c| c.subscriber != participant);
        }
        owned
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    pub fn consumer_count(&self) -> usize {
        self.producers.values().map(|p| p.consumers.len()).sum()
    }

    /// The subscriber can now receive `track`: start forwarding (audio) or ask for a keyframe
    /// to start from (video).
    pub fn handle_consumer_ready(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        now: Instant,
    ) {
        let Some(p) = self.producers.get_mut(&track) else {
            return;
        };
        let Some(i) = p.consumers.iter().position(|c| c.subscriber == subscriber) else {
            return;
        };
        if p.consumers[i].state != ConsumerState::Pending {
            return;
        }
        match p.kind {
            MediaKind::Audio => p.consumers[i].state = ConsumerState::Forwarding,
            MediaKind::Video if p.consumers[i].hidden => {
                p.consumers[i].state = ConsumerState::Paused;
            }
            MediaKind::Video => {
                let target = p.best_layer(p.useful_max(&p.consumers[i]), now);
                let c = &mut p.consumers[i];
                c.state = ConsumerState::AwaitingKeyframe;
                c.target = target;
                Self::request_keyframe(&self.config, &mut self.outputs, track, p, target, now);
            }
        }
    }

    /// What the subscriber wants of a video track: at most spatial layer `max_layer`
    /// (0 = lowest), or nothing at all (`None`: its tile is hidden). Takes effect at the next
    /// keyframe of the layer chosen, which is asked for.
    pub fn set_consumer_max_layer(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        max_layer: Option<u8>,
        now: Instant,
    ) {
        let Some(p) = self.producers.get_mut(&track) else {
            return;
        };
        if p.kind != MediaKind::Video {
            return;
        }
        let Some(i) = p.consumers.iter().position(|c| c.subscriber == subscriber) else {
            return;
        };
        let c = &mut p.consumers[i];
        c.hidden = max_layer.is_none();
        match (max_layer, c.state) {
            (None, ConsumerState::Pending) => {} // paused once ready
            (None, _) => c.state = ConsumerState::Paused,
            (Some(max), state) => {
                c.max_layer = max.min(MAX_LAYERS - 1);
                if state == ConsumerState::Paused {
                    // Resumed: it starts again from a keyframe, like a new subscriber.
                    c.state = ConsumerState::AwaitingKeyframe;
                    c.restart();
                }
                if c.state != ConsumerState::Pending {
                    Self::retarget(&self.config, &mut self.outputs, track, p, i, now);
                }
            }
        }
    }

    /// How the subscriber shows a video track: hidden (nothing is sent), or at `height`
    /// pixels (`None`: as large as it comes), so that it gets the smallest layer that looks
    /// sharp at that size (adaptive stream).
    pub fn set_consumer_view(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        visible: bool,
        height: Option<u16>,
        now: Instant,
    ) {
        let Some(p) = self.producers.get_mut(&track) else {
            return;
        };
        let Some(c) = p.consumers.iter_mut().find(|c| c.subscriber == subscriber) else {
            return;
        };
        c.shown_height = height;
        let max = visible.then_some(c.max_layer);
        self.set_consumer_max_layer(subscriber, track, max, now);
    }

    /// A subscriber reported picture loss (PLI/FIR): relay it to the publisher of the layer
    /// that subscriber receives, throttled.
    pub fn handle_keyframe_request(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        now: Instant,
    ) {
        let Some(p) = self.producers.get_mut(&track) else {
            return;
        };
        if p.kind != MediaKind::Video {
            return;
        }
        let Some(c) = p.consumers.iter().find(|c| c.subscriber == subscriber) else {
            return;
        };
        let layer = match c.state {
            ConsumerState::Forwarding => c.layer,
            ConsumerState::AwaitingKeyframe => c.target,
            ConsumerState::Pending | ConsumerState::Paused => return,
        };
        Self::request_keyframe(&self.config, &mut self.outputs, track, p, layer, now);
    }

    /// One packet of a single-layer producer.
    pub fn handle_rtp(&mut self, track: TrackId, packet: RtpPacket, now: Instant) {
        self.handle_layer_rtp(track, 0, packet, now);
    }

    /// One packet from a producer's spatial layer `layer` (0 = lowest): fan it out to every
    /// consumer of that layer that can take it, and switch consumers waiting for this layer's
    /// keyframe.
    pub fn handle_layer_rtp(&mut self, track: TrackId, layer: u8, packet: RtpPacket, now: Instant) {
        let Some(p) = self.producers.get_mut(&track) else {
            *self.drops.entry(DropReason::UnknownTrack).or_default() += 1;
            return;
        };
        if layer >= MAX_LAYERS || (layer > 0 && p.kind != MediaKind::Video) {
            *self.drops.entry(DropReason::UnknownTrack).or_default() += 1;
            return;
        }
        let l = layer as usize;
        let new_layer = p.layers.len() <= l || p.layers[l].last_packet_at.is_none();
        if p.layers.len() <= l {
            p.layers.resize_with(l + 1, Layer::default);
            self.layers_appeared = true;
        }
        let was_alive = p.layers[l].alive(now);
        p.layers[l].last_packet_at = Some(now);
        if p.layers[l].ssrc != Some(packet.ssrc) {
            // A new source (first packet, or the publisher restarted its encoder): its
            // consumers rebase, and video consumers wait for a keyframe of the new source.
            let switched = p.layers[l].ssrc.is_some();
            p.layers[l].ssrc = Some(packet.ssrc);
            if switched {
                for c in p.consumers.iter_mut().filter(|c| c.layer == layer) {
                    if c.state == ConsumerState::Forwarding {
                        c.restart();
                        if p.kind == MediaKind::Video {
                            c.state = ConsumerState::AwaitingKeyframe;
                            c.target = layer;
                        }
                    }
                }
            }
            if p.layers[l].keyframe_request_owed {
                Self::request_keyframe(&self.config, &mut self.outputs, track, p, layer, now);
            }
        }
        if p.kind == MediaKind::Video && (new_layer || !was_alive || p.layers.len() > 1) {
            // Layers come and go (the publisher's encoder adapts, a layer is paused): consumers
            // whose layer went silent, or who can have a better one now, move.
            for i in 0..p.consumers.len() {
                let c = &p.consumers[i];
                let dead = |l: u8| !p.layers.get(l as usize).is_some_and(|x| x.alive(now));
                // Receiving a layer that stopped, or waiting for a keyframe of one (a layer the
                // publisher paused never sends it): move to a layer that flows.
                let stuck = match c.state {
                    ConsumerState::Forwarding => c.layer != layer && dead(c.layer),
                    ConsumerState::AwaitingKeyframe => c.target != layer && dead(c.target),
                    ConsumerState::Pending | ConsumerState::Paused => false,
                };
                if new_layer || !was_alive || stuck {
                    Self::retarget(&self.config, &mut self.outputs, track, p, i, now);
                }
            }
        }
        let mut keyframe: Option<bool> = None;
        let codec = p.codec;
        let descriptor = if codec == Codec::Vp8 {
            vp8::Vp8Descriptor::parse(&packet.payload)
        } else {
            None
        };
        let is_key = |k: &mut Option<bool>| {
            *k.get_or_insert_with(|| codec.is_keyframe_start(&packet.payload))
        };
        {
            let lay = &mut p.layers[l];
            if lay.last_keyframe_request_at.is_some() && !lay.keyframe_request_answered {
                lay.keyframe_request_answered = is_key(&mut keyframe);
            }
            if codec == Codec::Vp8 && packet.payload.first().is_some_and(|b| b & 0x10 != 0) {
                if let Some((_, height)) = codec::vp8_keyframe_size(&packet.payload) {
                    lay.height = Some(height);
                }
            }
        }
        for c in &mut p.consumers {
            match c.state {
                ConsumerState::Pending => {
                    if layer == c.target {
                        *self.drops.entry(DropReason::NotReady).or_default() += 1;
                    }
                    continue;
                }
                ConsumerState::Paused => continue,
                ConsumerState::AwaitingKeyframe => {
                    if layer != c.target {
                        continue;
                    }
                    if !is_key(&mut keyframe) {
                        *self.drops.entry(DropReason::AwaitingKeyframe).or_default() += 1;
                        continue;
                    }
                    c.state = ConsumerState::Forwarding;
                    c.layer = layer;
                    // Start a fresh mapping at the keyframe: what was skipped leaves no gap.
                    c.restart();
                }
                ConsumerState::Forwarding if c.layer != layer => {
                    // A switch to this layer happens at its keyframe, never in between.
                    if layer != c.target || !is_key(&mut keyframe) {
                        continue;
                    }
                    c.layer = layer;
                    c.restart();
                }
                ConsumerState::Forwarding => {}
            }
            let vp8_fields = match (&mut c.vp8, &descriptor) {
                (Some(m), Some(d)) => match m.map(d) {
                    Some(fields) => Some(fields),
                    None => {
                        *self.drops.entry(DropReason::Stale).or_default() += 1;
                        continue;
                    }
                },
                _ => None,
            };
            let Some((seq, ts)) = c
                .rewriter
                .rewrite(packet.sequence_number, packet.timestamp, now)
            else {
                *self.drops.entry(DropReason::Stale).or_default() += 1;
                continue;
            };
            let mut out = packet.clone();
            out.sequence_number = seq;
            out.timestamp = ts;
            if let (Some(fields), Some(d)) = (vp8_fields, &descriptor) {
                // Copy the payload only when a number really changes (after a switch).
                let same = fields.picture_id == d.picture_id
                    && fields.tl0_pic_idx == d.tl0_pic_idx
                    && fields.key_idx == d.key_idx;
                if !same {
                    out.payload = d.rewrite(&packet.payload, fields);
                }
            }
            self.outputs.push_back(Output::Rtp {
                subscriber: c.subscriber,
                track,
                kind: p.kind,
                packet: out,
            });
        }
        if keyframe == Some(true) && !p.awaiting_keyframe_on(layer) {
            p.layers[l].keyframe_request_owed = false;
        }
    }

    /// Emits keyframe requests that were throttled and are still needed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (track, p) in &mut self.producers {
            for layer in 0..p.layers.len() as u8 {
                if p.awaiting_keyframe_on(layer) {
                    p.layers[layer as usize].keyframe_request_owed = true;
                }
                if p.layers[layer as usize].keyframe_request_owed {
                    Self::request_keyframe(&self.config, &mut self.outputs, *track, p, layer, now);
                }
            }
        }
    }

    /// When [`Self::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.producers
            .values()
            .flat_map(|p| {
                p.layers
                    .iter()
                    .enumerate()
                    .filter(|(i, l)| l.keyframe_request_owed || p.awaiting_keyframe_on(*i as u8))
                    .map(|(i, l)| {
                        let waiting = p.awaiting_keyframe_on(i as u8);
                        Self::next_keyframe_request_at(&self.config, l, waiting)
                            .unwrap_or_else(Instant::now)
                    })
            })
            .min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Drop counts since the last call, by reason.
    pub fn take_drops(&mut self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        self.drops.drain()
    }

    /// The highest layer any ready consumer wants of `track` (`None`: nobody wants any):
    /// what its publisher needs to send (dynacast).
    pub fn wanted_layer(&self, track: TrackId) -> Option<u8> {
        self.producers.get(&track)?.demand()
    }

    /// Says, for every simulcast producer whose demand changed since it was last said, which
    /// layers its publisher needs to send ([`Output::LayersWanted`]). Cheap when nothing
    /// changed; call after the room handled a command.
    pub fn refresh_demand(&mut self) {
        self.layers_appeared = false;
        for (track, p) in &mut self.producers {
            if p.layers.len() < 2 {
                continue; // not (yet) seen as simulcast: nothing to pause
            }
            let demand = p.demand();
            if p.announced_demand != Some(demand) {
                p.announced_demand = Some(demand);
                self.outputs.push_back(Output::LayersWanted {
                    publisher: p.publisher,
                    track: *track,
                    max_layer: demand,
                });
            }
        }
    }

    /// [`Self::refresh_demand`] if a producer showed a new layer (it may be simulcast now);
    /// call after feeding packets.
    pub fn refresh_demand_if_layers_appeared(&mut self) {
        if self.layers_appeared {
            self.refresh_demand();
        }
    }

    /// The layer consumer `i` should move to now; asks for its keyframe when that is not the
    /// layer it receives.
    fn retarget(
        config: &RouterConfig,
        outputs: &mut VecDeque<Output>,
        track: TrackId,
        p: &mut Producer,
        i: usize,
        now: Instant,
    ) {
        let target = p.best_layer(p.useful_max(&p.consumers[i]), now);
        let c = &mut p.consumers[i];
        if matches!(c.state, ConsumerState::Pending | ConsumerState::Paused) {
            return;
        }
        c.target = target;
        // Throttled per layer, so asking again while a switch is pending costs nothing.
        if c.state == ConsumerState::AwaitingKeyframe || c.layer != target {
            Self::request_keyframe(config, outputs, track, p, target, now);
        }
    }

    /// When the layer may be asked for a keyframe again (`None`: at once).
    ///
    /// At most one request per `keyframe_request_interval`, so that subscribers reporting loss
    /// cannot make a publisher send nothing but keyframes. One exception keeps joins fast when
    /// many subscribers become ready one after another (a room filling up): once a keyframe has
    /// answered the last request, a subscriber that became ready just after it passed would
    /// otherwise wait out the whole interval, so its request may go out after a short floor.
    /// That costs at most one extra keyframe per floor, and only while joins keep coming.
    fn next_keyframe_request_at(
        config: &RouterConfig,
        l: &Layer,
        anyone_waiting: bool,
    ) -> Option<Instant> {
        let last = l.last_keyframe_request_at?;
        let wait = if l.keyframe_request_answered && anyone_waiting {
            config.keyframe_request_interval.min(ANSWERED_REQUEST_FLOOR)
        } else {
            config.keyframe_request_interval
        };
        Some(last + wait)
    }

    fn request_keyframe(
        config: &RouterConfig,
        outputs: &mut VecDeque<Output>,
        track: TrackId,
        p: &mut Producer,
        layer: u8,
        now: Instant,
    ) {
        let waiting = p.awaiting_keyframe_on(layer);
        let publisher = p.publisher;
        if p.layers.len() <= layer as usize {
            p.layers.resize_with(layer as usize + 1, Layer::default);
        }
        let l = &mut p.layers[layer as usize];
        let throttled =
            Self::next_keyframe_request_at(config, l, waiting).is_some_and(|at| now < at);
        let Some(ssrc) = l.ssrc else {
            // Nothing received yet: ask as soon as we know which stream to ask about.
            l.keyframe_request_owed = true;
            return;
        };
        if throttled {
            l.keyframe_request_owed = true;
            return;
        }
        l.last_keyframe_request_at = Some(now);
        l.keyframe_request_answered = false;
        l.keyframe_request_owed = false;
        outputs.push_back(Output::RequestKeyframe {
            publisher,
            track,
            ssrc,
        });
    }
}

#[cfg(test)]
mod tests;
