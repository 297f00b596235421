//! Egress: one task per subscriber drains its bounded queue of forwarded packets and writes
//! each onto the outgoing track it belongs to, keeping a short history of video per track to
//! answer the subscriber's NACKs. Tracks are added and removed, and retransmissions asked for,
//! through a control channel that is always read first, so a track is registered before its
//! first packet.

use std::collections::HashMap;

use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::EgressWriter;
use crate::forward::history::SendHistory;
use crate::forward::{MediaKind, RtpPacket, TrackId};
use crate::metrics::{Metrics, TaskGuard};

/// One packet on its way out to a subscriber's copy of `track`.
pub struct EgressItem {
    pub track: TrackId,
    pub kind: MediaKind,
    pub packet: RtpPacket,
}

pub enum EgressControl {
    Add(TrackId, EgressWriter),
    Remove(TrackId),
    /// The subscriber lost these packets of `track` (its sequence numbers): send them again.
    Retransmit(TrackId, Vec<u16>),
}

/// Video packets kept per outgoing track for retransmission: about 5 s at 100 packets/s.
/// The payloads are shared with every other subscriber's copy, so this costs little memory.
const HISTORY_PACKETS: usize = 512;

struct Outgoing {
    writer: EgressWriter,
    history: Option<SendHistory>,
}

const BATCH: usize = 64;

/// Counters resolved once: label lookups hash strings, which the packet path should not.
struct OutCounters {
    packets: [IntCounter; 2],
    bytes: [IntCounter; 2],
    unbound: IntCounter,
    retransmitted: IntCounter,
    retransmit_missed: IntCounter,
}

impl OutCounters {
    fn new(m: &Metrics) -> Self {
        let kinds = [MediaKind::Audio.as_str(), MediaKind::Video.as_str()];
        OutCounters {
            packets: kinds.map(|k| m.rtp_packets.with_label_values(&["out", k])),
            bytes: kinds.map(|k| m.rtp_bytes.with_label_values(&["out", k])),
            unbound: m.dropped_packets.with_label_values(&["not_bound"]),
            retransmitted: m.retransmissions.with_label_values(&["sent"]),
            retransmit_missed: m.retransmissions.with_label_values(&["not_in_history"]),
        }
    }
}

/// Runs until the packet queue closes (the subscriber left the room) or the control channel
/// closes (its session ended).
pub fn spawn_egress(
    mut packets: mpsc::Receiver<EgressItem>,
    mut control: mpsc::UnboundedReceiver<EgressControl>,
    metrics: &Metrics,
    joined_at: std::time::Instant,
    guard: TaskGuard,
) {
    let counters = OutCounters::new(metrics);
    let join_time = metrics.join_to_first_media.clone();
    let mut first_media_sent = false;
    tokio::spawn(async move {
        let _guard = guard;
        let mut tracks: HashMap<TrackId, Outgoing> = HashMap::new();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                c = control.recv() => match c {
                    Some(EgressControl::Add(track, writer)) => {
                        let history = (writer.kind() == MediaKind::Video)
                            .then(|| SendHistory::new(HISTORY_PACKETS));
                        tracks.insert(track, Outgoing { writer, history });
                    }
                    Some(EgressControl::Remove(track)) => { tracks.remove(&track); }
                    Some(EgressControl::Retransmit(track, seqs)) => {
                        let Some(out) = tracks.get(&track) else { continue };
                        let Some(history) = &out.history else { continue };
                        for seq in seqs {
                            match history.get(seq) {
                                Some(p) => {
                                    out.writer.write(p).await;
                                    counters.retransmitted.inc();
                                }
                                None => counters.retransmit_missed.inc(),
                            }
                        }
                    }
                    None => break,
                },
                n = packets.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for item in batch.drain(..) {
                        let Some(out) = tracks.get_mut(&item.track) else {
                            counters.unbound.inc();
                            continue;
                        };
                        let written = out.writer.write(&item.packet).await;
                        let k = item.kind as usize;
                        if written == 0 {
                            counters.unbound.inc();
                        } else {
                            if !first_media_sent {
                                first_media_sent = true;
                                join_time.observe(joined_at.elapsed().as_secs_f64());
                            }
                            counters.packets[k].inc();
                            counters.bytes[k].inc_by(item.packet.wire_size() as u64);
                        }
                        if let Some(history) = &mut out.history {
                            history.insert(item.packet);
                        }
                    }
                }
            }
        }
    });
}
