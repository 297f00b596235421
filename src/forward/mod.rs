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
}

#[derive(Debug)]
struct Consumer {
    subscriber: ParticipantId,
    state: ConsumerState,
    rewriter: SeqTsRewriter,
}

#[derive(Debug)]
struct Producer {
    publisher: ParticipantId,
    kind: MediaKind,
    codec: Codec,
    clock_rate: u32,
    ssrc: Option<u32>,
    consumers: Vec<Consumer>,
    last_keyframe_request_at: Option<Instant>,
    /// A keyframe arrived after the last request.
    keyframe_request_answered: bool,
    /// A request was throttled (or not yet possible) and is still owed.
    keyframe_request_owed: bool,
}

impl Producer {
    fn anyone_awaiting_keyframe(&self) -> bool {
        self.consumers
            .iter()
            .any(|c| c.state == ConsumerState::AwaitingKeyframe)
    }
}

#[derive(Debug, Default)]
pub struct Router {
    config: RouterConfig,
    producers: HashMap<TrackId, Producer>,
    outputs: VecDeque<Output>,
    drops: HashMap<DropReason, u64>,
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
                ssrc: None,
                consumers: Vec::new(),
                last_keyframe_request_at: None,
                keyframe_request_answered: false,
                keyframe_request_owed: false,
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
        let Some(c) = p.consumers.iter_mut().find(|c| c.subscriber == subscriber) else {
            return;
        };
        if c.state != ConsumerState::Pending {
            return;
        }
        match p.kind {
            MediaKind::Audio => c.state = ConsumerState::Forwarding,
            MediaKind::Video => {
                c.state = ConsumerState::AwaitingKeyframe;
                Self::request_keyframe(&self.config, &mut self.outputs, track, p, now);
            }
        }
    }

    /// A subscriber reported picture loss (PLI/FIR): relay it to the publisher, throttled.
    pub fn handle_keyframe_request(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        now: Instant,
    ) {
        let Some(p) = self.producers.get_mut(&track) else {
            return;
        };
        if p.kind != MediaKind::Video || !p.consumers.iter().any(|c| c.subscriber == subscriber) {
            return;
        }
        Self::request_keyframe(&self.config, &mut self.outputs, track, p, now);
    }

    /// One packet from a producer: fan it out to every consumer that can take it.
    pub fn handle_rtp(&mut self, track: TrackId, packet: RtpPacket, now: Instant) {
        let Some(p) = self.producers.get_mut(&track) else {
            *self.drops.entry(DropReason::UnknownTrack).or_default() += 1;
            return;
        };
        if p.ssrc != Some(packet.ssrc) {
            // A new source (first packet, or the publisher restarted its encoder): every
            // consumer rebases, and video consumers wait for a keyframe of the new source.
            let switched = p.ssrc.is_some();
            p.ssrc = Some(packet.ssrc);
            if switched {
                for c in &mut p.consumers {
                    c.rewriter.reset_source();
                    if p.kind == MediaKind::Video && c.state == ConsumerState::Forwarding {
                        c.state = ConsumerState::AwaitingKeyframe;
                    }
                }
            }
            if p.keyframe_request_owed {
                Self::request_keyframe(&self.config, &mut self.outputs, track, p, now);
            }
        }
        let mut keyframe: Option<bool> = None;
        let codec = p.codec;
        if p.last_keyframe_request_at.is_some() && !p.keyframe_request_answered {
            p.keyframe_request_answered =
                *keyframe.get_or_insert_with(|| codec.is_keyframe_start(&packet.payload));
        }
        for c in &mut p.consumers {
            match c.state {
                ConsumerState::Pending => {
                    *self.drops.entry(DropReason::NotReady).or_default() += 1;
                    continue;
                }
                ConsumerState::AwaitingKeyframe => {
                    let is_key =
                        *keyframe.get_or_insert_with(|| codec.is_keyframe_start(&packet.payload));
                    if !is_key {
                        *self.drops.entry(DropReason::AwaitingKeyframe).or_default() += 1;
                        continue;
                    }
                    c.state = ConsumerState::Forwarding;
                    // Start a fresh mapping at the keyframe: what was skipped leaves no gap.
                    c.rewriter.reset_source();
                }
                ConsumerState::Forwarding => {}
            }
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
            self.outputs.push_back(Output::Rtp {
                subscriber: c.subscriber,
                track,
                kind: p.kind,
                packet: out,
            });
        }
        if keyframe == Some(true) && !p.anyone_awaiting_keyframe() {
            p.keyframe_request_owed = false;
        }
    }

    /// Emits keyframe requests that were throttled and are still needed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (track, p) in &mut self.producers {
            if p.anyone_awaiting_keyframe() {
                p.keyframe_request_owed = true;
            }
            if p.keyframe_request_owed {
                Self::request_keyframe(&self.config, &mut self.outputs, *track, p, now);
            }
        }
    }

    /// When [`Self::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.producers
            .values()
            .filter(|p| p.keyframe_request_owed || p.anyone_awaiting_keyframe())
            .map(|p| Self::next_keyframe_request_at(&self.config, p).unwrap_or_else(Instant::now))
            .min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Drop counts since the last call, by reason.
    pub fn take_drops(&mut self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        self.drops.drain()
    }

    /// When the producer may be asked for a keyframe again (`None`: at once).
    ///
    /// At most one request per `keyframe_request_interval`, so that subscribers reporting loss
    /// cannot make a publisher send nothing but keyframes. One exception keeps joins fast when
    /// many subscribers become ready one after another (a room filling up): once a keyframe has
    /// answered the last request, a subscriber that became ready just after it passed would
    /// otherwise wait out the whole interval, so its request may go out after a short floor.
    /// That costs at most one extra keyframe per floor, and only while joins keep coming.
    fn next_keyframe_request_at(config: &RouterConfig, p: &Producer) -> Option<Instant> {
        let last = p.last_keyframe_request_at?;
        let wait = if p.keyframe_request_answered && p.anyone_awaiting_keyframe() {
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
        now: Instant,
    ) {
        let throttled = Self::next_keyframe_request_at(config, p).is_some_and(|at| now < at);
        let Some(ssrc) = p.ssrc else {
            // Nothing received yet: ask as soon as we know which stream to ask about.
            p.keyframe_request_owed = true;
            return;
        };
        if throttled {
            p.keyframe_request_owed = true;
            return;
        }
        p.last_keyframe_request_at = Some(now);
        p.keyframe_request_answered = false;
        p.keyframe_request_owed = false;
        outputs.push_back(Output::RequestKeyframe {
            publisher: p.publisher,
            track,
            ssrc,
        });
    }
}

#[cfg(test)]
mod tests;
