//! One published video track with simulcast layers, and every subscriber's copy of it: which
//! layer each copy carries, when it may switch, and how its packets are renumbered.
//!
//! Owns, per spatial layer (by rid/SSRC): the source's SSRC, its last sender report (the
//! NTP↔RTP mapping used to line timestamps up across a switch), its measured bitrate per
//! temporal layer, and the keyframe-request throttle. Per consumer: the target the allocator
//! set (a spatial and a temporal layer, or paused), the layer it forwards now, and one
//! sequence-number, timestamp and VP8 renumbering that runs across every switch and every
//! deliberate drop, so the subscriber's decoder sees one gap-free stream.
//!
//! Rules (LiveKit's forwarder and mediasoup's SimulcastConsumer work the same way):
//! - a spatial switch happens only at a keyframe of a layer between the current and the target
//!   one (so an upgrade or downgrade may stop half way when that layer's keyframe comes first);
//!   until then the current layer goes on; a keyframe of the target is requested, throttled per
//!   layer, so one subscriber's switch never makes the other layers encode keyframes;
//! - temporal layers above the target are dropped whole frames at a time, and the dropped
//!   packets and pictures leave no gap in sequence numbers or picture ids; a higher temporal
//!   layer is taken again at a frame whose layer-sync bit says it can be decoded;
//! - a subscriber's own keyframe requests are throttled per subscriber and go to the layer it
//!   receives.
//!
//! Must not: read clocks, do I/O, know webrtc-rs. A malformed payload is forwarded as a frame
//! without temporal information, never a panic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::Codec;
use super::compact::{CounterMap, Mapped};
use super::rewrite::{ticks_for, Continuation};
use super::vp8::{Vp8Descriptor, Vp8Fields, Vp8Munger};
use super::{MediaKind, Output, ParticipantId, RtpPacket, TrackId};

/// Browsers send at most three simulcast encodings.
pub const MAX_SPATIAL_LAYERS: usize = 3;
/// VP8's TID has two bits.
pub const MAX_TEMPORAL_LAYERS: usize = 4;

/// A simulcast layer, 0 the lowest resolution (the publisher's `q`, `h`, `f` rids in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpatialLayer(pub u8);

/// What one consumer should receive: a spatial layer and the highest temporal layer in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerTarget {
    pub spatial: SpatialLayer,
    pub temporal: u8,
}

impl LayerTarget {
    /// The whole of a spatial layer.
    pub fn full(spatial: u8) -> Self {
        Self {
            spatial: SpatialLayer(spatial),
            temporal: (MAX_TEMPORAL_LAYERS - 1) as u8,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimulcastConfig {
    /// At most one keyframe request per layer in this interval (mediasoup: 1 s).
    pub keyframe_request_interval: Duration,
    /// At most one of a subscriber's own keyframe requests (PLI/FIR, or the repair policy's)
    /// is passed on per interval.
    pub subscriber_keyframe_interval: Duration,
    /// A layer with no packet for this long is taken as stopped (the publisher paused it, or
    /// its uplink could not carry it): its consumers may start again from any layer up to
    /// their target, and its measured bitrate is zero.
    pub layer_silence: Duration,
    /// Sender-report timestamps that disagree with the wall-clock estimate by more than this
    /// are not believed at a switch.
    pub sender_report_tolerance: Duration,
}

impl Default for SimulcastConfig {
    fn default() -> Self {
        Self {
            keyframe_request_interval: Duration::from_millis(500),
            subscriber_keyframe_interval: Duration::from_millis(1000),
            layer_silence: Duration::from_millis(1500),
            sender_report_tolerance: Duration::from_millis(500),
        }
    }
}

/// Why a packet of the layer a consumer wants was not sent to it; counted, never logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerDrop {
    /// The subscriber's transport is not connected yet.
    NotReady,
    /// Waiting for a keyframe of a layer to start or switch at.
    AwaitingKeyframe,
    /// A temporal layer above the consumer's target (sequence numbers compacted).
    TemporalLayer,
    /// A padding-only packet (the publisher's bandwidth probe; sequence numbers compacted).
    Padding,
    /// Older than the current source's start, or of a dropped picture.
    Stale,
    /// A layer index beyond what the track has.
    UnknownLayer,
}

impl LayerDrop {
    pub const ALL: [LayerDrop; 6] = [
        LayerDrop::NotReady,
        LayerDrop::AwaitingKeyframe,
        LayerDrop::TemporalLayer,
        LayerDrop::Padding,
        LayerDrop::Stale,
        LayerDrop::UnknownLayer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LayerDrop::NotReady => "not_ready",
            LayerDrop::AwaitingKeyframe => "awaiting_keyframe",
            LayerDrop::TemporalLayer => "temporal_layer",
            LayerDrop::Padding => "padding",
            LayerDrop::Stale => "stale",
            LayerDrop::UnknownLayer => "unknown_layer",
        }
    }
}

/// What happened to a subscriber's keyframe request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeRequestOutcome {
    /// Passed on (now, or when the layer's throttle allows).
    Forwarded(SpatialLayer),
    /// This subscriber asked too recently.
    Throttled,
    /// Nothing to ask for (unknown subscriber, paused copy, nothing received yet).
    Ignored,
}

/// A sender report's mapping of the layer's RTP clock onto NTP time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    /// 64-bit NTP timestamp (32.32 fixed point).
    pub ntp: u64,
    pub rtp: u32,
}

/// A switch of spatial layer, for metrics (layer switches by reason) and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSwitch {
    pub subscriber: ParticipantId,
    pub from: Option<SpatialLayer>,
    pub to: SpatialLayer,
}

/// What the forwarder needs to know about one packet's payload.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacketInfo {
    /// The first packet of a frame a decoder can start from.
    pub keyframe: bool,
    /// The first packet of a frame (temporal decisions change only here).
    pub frame_start: bool,
    pub temporal_id: Option<u8>,
    pub layer_sync: bool,
    pub vp8: Option<Vp8Descriptor>,
}

impl PacketInfo {
    pub fn of(codec: Codec, payload: &[u8]) -> PacketInfo {
        match codec {
            Codec::Vp8 => match Vp8Descriptor::parse(payload) {
                Some(d) => PacketInfo {
                    keyframe: d.keyframe,
                    frame_start: d.frame_start,
                    temporal_id: d.temporal_id,
                    layer_sync: d.layer_sync,
                    vp8: Some(d),
                },
                None => PacketInfo::default(),
            },
            other => {
                let keyframe = other.is_keyframe_start(payload);
                PacketInfo {
                    keyframe,
                    // Without a temporal id, frames are never dropped, so frame boundaries
                    // only matter at keyframes.
                    frame_start: keyframe,
                    ..Default::default()
                }
            }
        }
    }
}

/// Bits per second by temporal layer over the last complete window.
#[derive(Debug, Clone)]
struct RateMeter {
    window_start: Option<Instant>,
    bytes: [u64; MAX_TEMPORAL_LAYERS],
    rates: [u64; MAX_TEMPORAL_LAYERS],
}

const RATE_WINDOW: Duration = Duration::from_millis(1000);

impl RateMeter {
    fn new() -> Self {
        Self {
            window_start: None,
            bytes: [0; MAX_TEMPORAL_LAYERS],
            rates: [0; MAX_TEMPORAL_LAYERS],
        }
    }

    fn add(&mut self, temporal: u8, bytes: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let micros = elapsed.as_micros().max(1) as u64;
            for t in 0..MAX_TEMPORAL_LAYERS {
                self.rates[t] = self.bytes[t] * 8 * 1_000_000 / micros;
                self.bytes[t] = 0;
            }
            self.window_start = Some(now);
        }
        self.bytes[(temporal as usize).min(MAX_TEMPORAL_LAYERS - 1)] += bytes as u64;
    }

    /// Cumulative: entry t is the bitrate of temporal layers 0..=t.
    fn cumulative(&self) -> [u64; MAX_TEMPORAL_LAYERS] {
        let mut out = self.rates;
        for t in 1..MAX_TEMPORAL_LAYERS {
            out[t] += out[t - 1];
        }
        out
    }
}

#[derive(Debug)]
struct Layer {
    ssrc: Option<u32>,
    sender_report: Option<SenderReport>,
    last_packet_at: Option<Instant>,
    rates: RateMeter,
    last_keyframe_request_at: Option<Instant>,
    /// A request was throttled (or no SSRC was known yet) and is still owed.
    keyframe_request_owed: bool,
}

impl Layer {
    fn silent(&self, now: Instant, silence: Duration) -> bool {
        self.last_packet_at
            .is_none_or(|at| now.saturating_duration_since(at) >= silence)
    }
}

#[derive(Debug)]
struct Consumer {
    subscriber: ParticipantId,
    ready: bool,
    /// `None`: paused by the allocator (hidden, or no bandwidth for even the lowest layer).
    target: Option<LayerTarget>,
    /// The spatial layer being forwarded, once started at a keyframe.
    current: Option<SpatialLayer>,
    /// The highest temporal layer being forwarded within it.
    current_temporal: u8,
    sequence: CounterMap,
    vp8: Vp8Munger,
    /// `out = in + ts_offset` for the current layer.
    ts_offset: u32,
    /// The layer `ts_offset` belongs to (kept while paused, for the sender-report alignment).
    ts_layer: Option<SpatialLayer>,
    last_out_ts: Option<(u32, Instant)>,
    last_subscriber_keyframe_request_at: Option<Instant>,
}

impl Consumer {
    /// The layer this consumer waits for a keyframe on, if any.
    fn keyframe_wanted(&self) -> Option<SpatialLayer> {
        let target = self.target?;
        if !self.ready || self.current == Some(target.spatial) {
            return None;
        }
        Some(target.spatial)
    }
}

/// One published video track and its consumers. Feed packets with [`Self::handle_rtp`];
/// drain [`Output`]s with [`Self::poll_output`].
#[derive(Debug)]
pub struct SimulcastTrack {
    track: TrackId,
    publisher: ParticipantId,
    codec: Codec,
    clock_rate: u32,
    config: SimulcastConfig,
    layers: Vec<Layer>,
    consumers: Vec<Consumer>,
    outputs: VecDeque<Output>,
    switches: Vec<LayerSwitch>,
    drops: [u64; LayerDrop::ALL.len()],
}

/// The decision for one packet and one consumer.
enum Verdict {
    Send(RtpPacket),
    Drop(LayerDrop),
    /// Not the layer this consumer takes: nothing to count.
    NotMine,
}

impl SimulcastTrack {
    /// A track with `layer_count` spatial layers (1 for a single encoding; at most
    /// [`MAX_SPATIAL_LAYERS`]).
    pub fn new(
        track: TrackId,
        publisher: ParticipantId,
        codec: Codec,
        clock_rate: u32,
        layer_count: usize,
        config: SimulcastConfig,
    ) -> Self {
        let layers = (0..layer_count.clamp(1, MAX_SPATIAL_LAYERS))
            .map(|_| Layer {
                ssrc: None,
                sender_report: None,
                last_packet_at: None,
                rates: RateMeter::new(),
                last_keyframe_request_at: None,
                keyframe_request_owed: false,
            })
            .collect();
        Self {
            track,
            publisher,
            codec,
            clock_rate: clock_rate.max(1),
            config,
            layers,
            consumers: Vec::new(),
            outputs: VecDeque::new(),
            switches: Vec::new(),
            drops: [0; LayerDrop::ALL.len()],
        }
    }

    pub fn track(&self) -> TrackId {
        self.track
    }

    pub fn publisher(&self) -> ParticipantId {
        self.publisher
    }

    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Adds a consumer, not ready and with no target yet (it receives nothing until both
    /// [`Self::handle_consumer_ready`] and [`Self::set_target`]). False when it exists or is
    /// the publisher.
    pub fn add_consumer(&mut self, subscriber: ParticipantId) -> bool {
        if subscriber == self.publisher || self.consumers.iter().any(|c| c.subscriber == subscriber)
        {
            return false;
        }
        self.consumers.push(Consumer {
            subscriber,
            ready: false,
            target: None,
            current: None,
            current_temporal: 0,
            sequence: CounterMap::new(16),
            vp8: Vp8Munger::new(),
            ts_offset: 0,
            ts_layer: None,
            last_out_ts: None,
            last_subscriber_keyframe_request_at: None,
        });
        true
    }

    /// The subscriber receives this track on an outgoing stream that carried another one:
    /// go on from where that stream ended. Before the consumer's first packet only.
    pub fn continue_consumer(&mut self, subscriber: ParticipantId, from: Continuation) {
        let Some(c) = self.consumer_mut(subscriber) else {
            return;
        };
        if let (Some((seq, ts, at)), None) = (from.last(), c.last_out_ts) {
            c.sequence.continue_after(seq as u64);
            c.last_out_ts = Some((ts, at));
        }
    }

    /// Removes a consumer; returns where its stream ended, for a recycled transceiver.
    pub fn remove_consumer(&mut self, subscriber: ParticipantId) -> Option<Continuation> {
        let at = self
            .consumers
            .iter()
            .position(|c| c.subscriber == subscriber)?;
        let c = self.consumers.swap_remove(at);
        Some(match (c.sequence.last_out(), c.last_out_ts) {
            (Some(seq), Some((ts, at))) => Continuation::new(seq as u16, ts, at),
            _ => Continuation::default(),
        })
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// The subscriber's transport is connected.
    pub fn handle_consumer_ready(&mut self, subscriber: ParticipantId, now: Instant) {
        let Some(c) = self.consumer_mut(subscriber) else {
            return;
        };
        c.ready = true;
        if let Some(layer) = c.keyframe_wanted() {
            self.request_keyframe(layer, now);
        }
    }

    /// The allocator's decision for one consumer: a layer target, or `None` to pause. A
    /// spatial change waits for a keyframe (requested here); a temporal change takes effect at
    /// the next frame that allows it. Targets above the track's top layer are clamped.
    pub fn set_target(
        &mut self,
        subscriber: ParticipantId,
        target: Option<LayerTarget>,
        now: Instant,
    ) {
        let top = SpatialLayer(self.layers.len() as u8 - 1);
        let Some(c) = self.consumer_mut(subscriber) else {
            return;
        };
        let target = target.map(|t| LayerTarget {
            spatial: t.spatial.min(top),
            temporal: t.temporal.min(MAX_TEMPORAL_LAYERS as u8 - 1),
        });
        c.target = target;
        if target.is_none() {
            // Paused: a resumed copy starts again at a keyframe.
            c.current = None;
        }
        if let Some(layer) = c.keyframe_wanted() {
            self.request_keyframe(layer, now);
        }
    }

    /// The consumer's current and target layers.
    pub fn consumer_layers(
        &self,
        subscriber: ParticipantId,
    ) -> Option<(Option<SpatialLayer>, Option<LayerTarget>)> {
        self.consumers
            .iter()
            .find(|c| c.subscriber == subscriber)
            .map(|c| (c.current, c.target))
    }

    /// A sender report for one layer (RTCP SR from the publisher on that layer's SSRC).
    pub fn handle_sender_report(&mut self, layer: SpatialLayer, ssrc: u32, report: SenderReport) {
        let Some(l) = self.layers.get_mut(layer.0 as usize) else {
            return;
        };
        if l.ssrc.is_none_or(|s| s == ssrc) {
            l.sender_report = Some(report);
        }
    }

    /// A subscriber's keyframe request (PLI/FIR, or the repair policy's): throttled per
    /// subscriber, then sent to the layer it receives (or is waiting for).
    pub fn handle_keyframe_request(
        &mut self,
        subscriber: ParticipantId,
        now: Instant,
    ) -> KeyframeRequestOutcome {
        let interval = self.config.subscriber_keyframe_interval;
        let Some(c) = self.consumer_mut(subscriber) else {
            return KeyframeRequestOutcome::Ignored;
        };
        let Some(layer) = c.current.or(c.target.map(|t| t.spatial)) else {
            return KeyframeRequestOutcome::Ignored;
        };
        if c.last_subscriber_keyframe_request_at
            .is_some_and(|at| now < at + interval)
        {
            return KeyframeRequestOutcome::Throttled;
        }
        c.last_subscriber_keyframe_request_at = Some(now);
        self.request_keyframe(layer, now);
        KeyframeRequestOutcome::Forwarded(layer)
    }

    /// One packet of one layer: forwarded to every consumer that takes it.
    pub fn handle_rtp(&mut self, layer: SpatialLayer, packet: RtpPacket, now: Instant) {
        let index = layer.0 as usize;
        if index >= self.layers.len() {
            self.drops[LayerDrop::UnknownLayer as usize] += 1;
            return;
        }
        let info = PacketInfo::of(self.codec, &packet.payload);
        let silence = self.config.layer_silence;
        let current_silent: [bool; MAX_SPATIAL_LAYERS] =
            std::array::from_fn(|i| self.layers.get(i).is_some_and(|l| l.silent(now, silence)));
        {
            let l = &mut self.layers[index];
            if l.ssrc != Some(packet.ssrc) {
                if l.ssrc.is_some() {
                    // The layer restarted (new SSRC): its old sender report says nothing about
                    // the new clock, and its consumers must start again at a keyframe.
                    l.sender_report = None;
                    for c in &mut self.consumers {
                        if c.current == Some(layer) {
                            c.current = None;
                        }
                    }
                }
                l.ssrc = Some(packet.ssrc);
            }
            l.last_packet_at = Some(now);
            l.rates
                .add(info.temporal_id.unwrap_or(0), packet.wire_size(), now);
            if info.keyframe {
                l.keyframe_request_owed = false;
            }
        }
        let reports: [Option<SenderReport>; MAX_SPATIAL_LAYERS] =
            std::array::from_fn(|i| self.layers.get(i).and_then(|l| l.sender_report));
        let ctx = Context {
            layer,
            info: &info,
            now,
            clock_rate: self.clock_rate,
            tolerance: self.config.sender_report_tolerance,
            current_silent: &current_silent,
            reports: &reports,
        };
        // Consumers that switched at the same keyframe renumber alike: one rewritten payload
        // per distinct set of VP8 fields, shared by all of them (a copy per consumer was 85 %
        // of the cost per packet after a switch, see docs/BENCHMARKS.md).
        let mut rewritten: Vec<(Vp8Fields, Bytes)> = Vec::new();
        for c in &mut self.consumers {
            match Self::forward_to(c, &ctx, &packet, &mut self.switches, &mut rewritten) {
                Verdict::Send(out) => self.outputs.push_back(Output::Rtp {
                    subscriber: c.subscriber,
                    track: self.track,
                    kind: MediaKind::Video,
                    packet: out,
                }),
                Verdict::Drop(reason) => self.drops[reason as usize] += 1,
                Verdict::NotMine => {}
            }
        }
    }

    fn forward_to(
        c: &mut Consumer,
        ctx: &Context,
        packet: &RtpPacket,
        switches: &mut Vec<LayerSwitch>,
        rewritten: &mut Vec<(Vp8Fields, Bytes)>,
    ) -> Verdict {
        let Some(target) = c.target else {
            return Verdict::NotMine;
        };
        let layer = ctx.layer;
        if !c.ready {
            return if layer == target.spatial {
                Verdict::Drop(LayerDrop::NotReady)
            } else {
                Verdict::NotMine
            };
        }
        // A current layer that stopped counts as none: start again from any keyframe.
        let current = c
            .current
            .filter(|cur| !ctx.current_silent[cur.0 as usize] || *cur == layer);
        if current != Some(layer) {
            let toward_target = match current {
                None => layer <= target.spatial,
                Some(cur) if cur < target.spatial => cur < layer && layer <= target.spatial,
                Some(cur) => target.spatial <= layer && layer < cur,
            };
            if !(toward_target && ctx.info.keyframe) {
                return if layer == target.spatial {
                    Verdict::Drop(LayerDrop::AwaitingKeyframe)
                } else {
                    Verdict::NotMine
                };
            }
            switches.push(LayerSwitch {
                subscriber: c.subscriber,
                from: c.current,
                to: layer,
            });
            Self::switch_to(c, ctx, packet.timestamp);
        }

        // Temporal layers: decisions change only at frame starts, so a frame is whole or gone.
        let tid = ctx.info.temporal_id.unwrap_or(0);
        if ctx.info.frame_start {
            if target.temporal < c.current_temporal {
                c.current_temporal = target.temporal;
            } else if tid == c.current_temporal + 1
                && tid <= target.temporal
                && (ctx.info.layer_sync || ctx.info.keyframe)
            {
                c.current_temporal = tid;
            }
        }
        if tid > c.current_temporal {
            c.sequence.drop_value(packet.sequence_number as u64);
            if let Some(d) = &ctx.info.vp8 {
                c.vp8.drop_frame(d);
            }
            return Verdict::Drop(LayerDrop::TemporalLayer);
        }
        if packet.payload.is_empty() {
            c.sequence.drop_value(packet.sequence_number as u64);
            return Verdict::Drop(LayerDrop::Padding);
        }

        let seq = match c.sequence.map(packet.sequence_number as u64) {
            Mapped::Out(seq) => seq as u16,
            Mapped::TooOld | Mapped::Dropped => return Verdict::Drop(LayerDrop::Stale),
        };
        let payload = match &ctx.info.vp8 {
            Some(d) => match c.vp8.map(d) {
                Some(fields) => match rewritten.iter().find(|(f, _)| *f == fields) {
                    Some((_, bytes)) => bytes.clone(),
                    None => {
                        let bytes = d.rewrite(&packet.payload, fields);
                        rewritten.push((fields, bytes.clone()));
                        bytes
                    }
                },
                None => return Verdict::Drop(LayerDrop::Stale),
            },
            None => packet.payload.clone(),
        };
        let ts = packet.timestamp.wrapping_add(c.ts_offset);
        if c.last_out_ts
            .is_none_or(|(last, _)| (ts.wrapping_sub(last) as i32) > 0)
        {
            c.last_out_ts = Some((ts, ctx.now));
        }
        Verdict::Send(RtpPacket {
            payload_type: packet.payload_type,
            sequence_number: seq,
            timestamp: ts,
            ssrc: packet.ssrc,
            marker: packet.marker,
            payload,
        })
    }

    /// Starts forwarding `ctx.layer` at its keyframe with timestamp `ts`: sequence numbers and
    /// picture ids follow the last ones sent; the timestamp offset lines the new layer's clock
    /// up with the old one's through both layers' sender reports (the same capture instant
    /// gets the same output timestamp), or, without them, advances by the time that passed.
    fn switch_to(c: &mut Consumer, ctx: &Context, ts: u32) {
        c.current = Some(ctx.layer);
        c.current_temporal = c.target.map_or(0, |t| t.temporal);
        c.sequence.reset_source();
        c.vp8.reset_source();
        let Some((last_ts, last_at)) = c.last_out_ts else {
            // The first packet of the stream: timestamps pass through.
            c.ts_offset = 0;
            c.ts_layer = Some(ctx.layer);
            return;
        };
        let elapsed = ctx.now.saturating_duration_since(last_at);
        let by_clock = last_ts.wrapping_add(ticks_for(elapsed, ctx.clock_rate).max(1));
        let by_reports = c.ts_layer.and_then(|old| {
            let old_report = ctx.reports[old.0 as usize]?;
            let new_report = ctx.reports[ctx.layer.0 as usize]?;
            Some(
                align_timestamp(ts, new_report, old_report, ctx.clock_rate)
                    .wrapping_add(c.ts_offset),
            )
        });
        let tolerance = ticks_for(ctx.tolerance, ctx.clock_rate) as i64;
        let out = match by_reports {
            Some(t) if ((t.wrapping_sub(by_clock) as i32) as i64).abs() <= tolerance => {
                if (t.wrapping_sub(last_ts) as i32) > 0 {
                    t
                } else {
                    // The same capture instant as a frame already sent from the old layer:
                    // one tick later, so the decoder never sees two frames share a timestamp.
                    last_ts.wrapping_add(1)
                }
            }
            _ => by_clock,
        };
        c.ts_offset = out.wrapping_sub(ts);
        c.ts_layer = Some(ctx.layer);
    }

    /// Asks for keyframes still owed or still wanted (throttled), like a timer would.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.layers.len() {
            let layer = SpatialLayer(i as u8);
            let wanted = self
                .consumers
                .iter()
                .any(|c| c.keyframe_wanted() == Some(layer));
            if wanted || self.layers[i].keyframe_request_owed {
                self.request_keyframe(layer, now);
            }
        }
    }

    /// When [`Self::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (0..self.layers.len())
            .filter(|&i| {
                let layer = SpatialLayer(i as u8);
                self.layers[i].keyframe_request_owed
                    || self
                        .consumers
                        .iter()
                        .any(|c| c.keyframe_wanted() == Some(layer))
            })
            .filter_map(|i| {
                let l = &self.layers[i];
                l.ssrc?;
                Some(l.last_keyframe_request_at.map_or_else(Instant::now, |at| {
                    at + self.config.keyframe_request_interval
                }))
            })
            .min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Spatial switches since the last call.
    pub fn take_switches(&mut self) -> impl Iterator<Item = LayerSwitch> + '_ {
        self.switches.drain(..)
    }

    /// Drop counts since the last call, by reason.
    pub fn take_drops(&mut self) -> impl Iterator<Item = (LayerDrop, u64)> + '_ {
        LayerDrop::ALL
            .into_iter()
            .map(|r| (r, std::mem::take(&mut self.drops[r as usize])))
            .filter(|(_, n)| *n > 0)
    }

    /// Measured bitrate of each spatial layer, cumulative by temporal layer (entry `[s][t]`:
    /// layer s with temporal layers 0..=t), in bits per second; zero for a silent layer.
    pub fn layer_bitrates(&self, now: Instant) -> Vec<[u64; MAX_TEMPORAL_LAYERS]> {
        self.layers
            .iter()
            .map(|l| {
                if l.silent(now, self.config.layer_silence) {
                    [0; MAX_TEMPORAL_LAYERS]
                } else {
                    l.rates.cumulative()
                }
            })
            .collect()
    }

    fn consumer_mut(&mut self, subscriber: ParticipantId) -> Option<&mut Consumer> {
        self.consumers
            .iter_mut()
            .find(|c| c.subscriber == subscriber)
    }

    fn request_keyframe(&mut self, layer: SpatialLayer, now: Instant) {
        let interval = self.config.keyframe_request_interval;
        let Some(l) = self.layers.get_mut(layer.0 as usize) else {
            return;
        };
        let Some(ssrc) = l.ssrc else {
            // Nothing received on this layer yet: ask once its SSRC is known.
            l.keyframe_request_owed = true;
            return;
        };
        if l.last_keyframe_request_at
            .is_some_and(|at| now < at + interval)
        {
            l.keyframe_request_owed = true;
            return;
        }
        l.last_keyframe_request_at = Some(now);
        l.keyframe_request_owed = false;
        self.outputs.push_back(Output::RequestKeyframe {
            publisher: self.publisher,
            track: self.track,
            ssrc,
        });
    }
}

struct Context<'a> {
    layer: SpatialLayer,
    info: &'a PacketInfo,
    now: Instant,
    clock_rate: u32,
    tolerance: Duration,
    current_silent: &'a [bool; MAX_SPATIAL_LAYERS],
    reports: &'a [Option<SenderReport>; MAX_SPATIAL_LAYERS],
}

/// The RTP timestamp on `to`'s clock of the instant that has timestamp `ts` on `from`'s clock,
/// through both clocks' sender reports.
fn align_timestamp(ts: u32, from: SenderReport, to: SenderReport, clock_rate: u32) -> u32 {
    // Capture time of `ts` in NTP units (2^-32 s), relative to `from`'s report.
    // Rounded at both steps so that a whole number of ticks survives the round trip.
    let ticks_since_from = ts.wrapping_sub(from.rtp) as i32 as i128;
    let clock = clock_rate as i128;
    let scaled = ticks_since_from << 32;
    let ntp = from.ntp as i128
        + if scaled >= 0 {
            (scaled + clock / 2) / clock
        } else {
            -((-scaled + clock / 2) / clock)
        };
    let ntp_since_to = ntp - to.ntp as i128;
    let ticks_since_to = (ntp_since_to * clock + (1 << 31)) >> 32;
    to.rtp.wrapping_add(ticks_since_to as i64 as u32)
}

#[cfg(test)]
mod tests;
