//! A subscriber's outgoing tracks as its room sees them: the writer of each copy into the
//! subscriber's peer connection, a short history of its video to answer NACKs from, and the
//! counters of what was sent.
//!
//! The room task writes forwarded packets here itself, in the same wake-up that fanned them
//! out, as mediasoup's workers do: a write is an SRTP encryption and a non-blocking `sendto`
//! on the one UDP socket every peer connection shares, so a queue and a task per subscriber
//! would only add two wake-ups per packet (they cost more than the write, see
//! docs/BENCHMARKS.md) without isolating anything: a full socket buffer stalls every
//! subscriber alike, and a subscriber whose link is slow loses packets past the socket, where
//! NACKs and keyframe requests recover them.

use std::collections::HashMap;
use std::time::Instant;

use prometheus::{Histogram, IntCounter};

use crate::forward::history::SendHistory;
use crate::forward::{Continuation, MediaKind, RtpPacket, TrackId};
use crate::metrics::Metrics;
use crate::rtc::EgressWriter;

/// Video packets kept per outgoing track for retransmission: about 2.5 s at 100 packets/s,
/// several round trips even on a poor link. The payloads are shared with every other
/// subscriber's copy, so the cost is the ring of packet headers.
const HISTORY_PACKETS: usize = 256;

/// Counters and histograms resolved once: label lookups hash strings, which the packet path
/// should not.
pub struct EgressCounters {
    packets: [IntCounter; 2],
    bytes: [IntCounter; 2],
    unbound: IntCounter,
    retransmitted: IntCounter,
    retransmit_missed: IntCounter,
    join_to_first_media: Histogram,
}

impl EgressCounters {
    pub fn new(m: &Metrics) -> Self {
        let kinds = [MediaKind::Audio.as_str(), MediaKind::Video.as_str()];
        EgressCounters {
            packets: kinds.map(|k| m.rtp_packets.with_label_values(&["out", k])),
            bytes: kinds.map(|k| m.rtp_bytes.with_label_values(&["out", k])),
            unbound: m.dropped_packets.with_label_values(&["not_bound"]),
            retransmitted: m.retransmissions.with_label_values(&["sent"]),
            retransmit_missed: m.retransmissions.with_label_values(&["not_in_history"]),
            join_to_first_media: m.join_to_first_media.clone(),
        }
    }
}

struct Outgoing {
    writer: EgressWriter,
    history: Option<SendHistory>,
}

/// One subscriber's outgoing tracks.
pub struct SubscriberEgress {
    tracks: HashMap<TrackId, Outgoing>,
    /// Where each idle outgoing stream (a transceiver the session keeps for reuse) ended, by
    /// stream key: the next track it carries goes on from there. At most one entry per
    /// transceiver the subscriber's connection has.
    parked: HashMap<u64, Continuation>,
    /// When the participant asked to join, until its first packet is sent: join-to-first-media
    /// is measured from here.
    joined_at: Option<Instant>,
}

impl SubscriberEgress {
    pub fn new(joined_at: Instant) -> Self {
        Self {
            tracks: HashMap::new(),
            parked: HashMap::new(),
            joined_at: Some(joined_at),
        }
    }

    /// Starts writing `track` through `writer`. Returns where the writer's stream ended when
    /// it carried another track before, for the router to go on from.
    pub fn add(&mut self, track: TrackId, writer: EgressWriter) -> Option<Continuation> {
        let continued = self.parked.remove(&writer.stream_key());
        let history =
            (writer.kind() == MediaKind::Video).then(|| SendHistory::new(HISTORY_PACKETS));
        self.tracks.insert(track, Outgoing { writer, history });
        continued
    }

    /// Stops writing `track`; its stream's end is kept for the next track the same
    /// transceiver carries.
    pub fn park(&mut self, track: TrackId, ended: Continuation) {
        if let Some(out) = self.tracks.remove(&track) {
            self.parked.insert(out.writer.stream_key(), ended);
        }
    }

    /// Writes one forwarded packet onto the subscriber's copy of `track`. A write that reaches
    /// no transport is counted and otherwise left alone: the packet is kept in the history
    /// regardless, so the subscriber's NACK for the gap it sees can still be answered.
    pub async fn send(
        &mut self,
        track: TrackId,
        kind: MediaKind,
        packet: RtpPacket,
        now: Instant,
        counters: &EgressCounters,
    ) {
        let Some(out) = self.tracks.get_mut(&track) else {
            counters.unbound.inc();
            return;
        };
        let written = out.writer.write(&packet, now).await;
        if written == 0 {
            counters.unbound.inc();
        } else {
            if let Some(joined_at) = self.joined_at.take() {
                counters
                    .join_to_first_media
                    .observe(joined_at.elapsed().as_secs_f64());
            }
            let k = kind as usize;
            counters.packets[k].inc();
            counters.bytes[k].inc_by(packet.wire_size() as u64);
        }
        if let Some(history) = &mut out.history {
            history.insert(packet);
        }
    }

    /// The subscriber lost these packets of `track` (by the sequence numbers it saw): sends
    /// again those still in the history.
    pub async fn retransmit(
        &self,
        track: TrackId,
        seqs: &[u16],
        now: Instant,
        counters: &EgressCounters,
    ) {
        let Some(out) = self.tracks.get(&track) else {
            return;
        };
        let Some(history) = &out.history else {
            return;
        };
        for &seq in seqs {
            match history.get(seq) {
                Some(p) => {
                    out.writer.write(p, now).await;
                    counters.retransmitted.inc();
                }
                None => counters.retransmit_missed.inc(),
            }
        }
    }
}
