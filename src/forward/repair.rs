//! Repair within budget: which of a subscriber's NACKed packets are worth resending, and when
//! one keyframe is the better answer.
//!
//! Owns, per subscriber, a token bucket of retransmission bytes refilled at a bounded share of
//! the subscriber's estimate ([`RepairBudget`]); and per outgoing video track, what was sent
//! recently with when it was sent and last resent ([`RepairHistory`], by the sequence numbers
//! the subscriber saw). A NACKed packet is resent only if it is in the history, younger than
//! `max_age` (a receiver's jitter buffer has given up on it by then), not older than the last
//! keyframe sent (nothing after a keyframe needs what came before it), not resent within the
//! last round trip (that copy may still be on its way), and the bucket holds its bytes. A
//! subscriber missing more than `far_behind_packets` at once is answered with one keyframe
//! request instead (the room passes it to
//! [`super::simulcast::SimulcastTrack::handle_keyframe_request`], which throttles it per
//! subscriber and routes it to the layer that subscriber receives).
//!
//! Must not: read clocks, send anything; returns packets and decisions as values.

use std::time::{Duration, Instant};

use super::codec::Codec;
use super::RtpPacket;

#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// Retransmissions may use at most this share of the subscriber's estimate.
    pub share: f64,
    /// The bucket holds this much of the retransmission rate (bursts after a loss).
    pub burst: Duration,
    /// A packet older than this is of no use to the receiver any more.
    pub max_age: Duration,
    /// More packets than this missing in one NACK: ask for a keyframe instead.
    pub far_behind_packets: usize,
    /// Round-trip time assumed before the first measurement.
    pub initial_rtt: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            share: 0.25,
            burst: Duration::from_millis(250),
            max_age: Duration::from_millis(1000),
            far_behind_packets: 64,
            initial_rtt: Duration::from_millis(100),
        }
    }
}

/// One subscriber's retransmission allowance: a token bucket in bytes on virtual time.
#[derive(Debug, Clone)]
pub struct RepairBudget {
    config: RepairConfig,
    /// Bytes per second.
    rate: f64,
    tokens: f64,
    refilled_at: Option<Instant>,
    rtt: Duration,
}

impl RepairBudget {
    /// A budget for a subscriber whose estimate is `estimate` bits per second.
    pub fn new(config: RepairConfig, estimate: u64) -> Self {
        let rtt = config.initial_rtt;
        let mut b = Self {
            config,
            rate: 0.0,
            tokens: 0.0,
            refilled_at: None,
            rtt,
        };
        b.handle_estimate(estimate);
        b.tokens = b.capacity();
        b
    }

    /// A new estimate from the subscriber's bandwidth estimator (bits per second).
    pub fn handle_estimate(&mut self, estimate: u64) {
        self.rate = estimate as f64 / 8.0 * self.config.share;
        self.tokens = self.tokens.min(self.capacity());
    }

    /// A new round-trip time for this subscriber (from its receiver reports).
    pub fn handle_rtt(&mut self, rtt: Duration) {
        self.rtt = rtt;
    }

    fn capacity(&self) -> f64 {
        self.rate * self.config.burst.as_secs_f64()
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.refilled_at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity());
        }
        self.refilled_at = Some(now);
    }

    /// Answers one NACK for one track: what to resend (already in the subscriber's numbering,
    /// ready for its egress), and whether to ask for a keyframe instead.
    pub fn handle_nack(
        &mut self,
        history: &mut RepairHistory,
        lost: &[u16],
        now: Instant,
    ) -> NackReply {
        self.refill(now);
        let mut reply = NackReply::default();
        let mut useful: Vec<u16> = Vec::new();
        for &seq in lost {
            match history.check(seq, now, self.config.max_age, self.rtt) {
                Ok(()) => useful.push(seq),
                Err(skip) => reply.skipped.count(skip),
            }
        }
        if useful.len() > self.config.far_behind_packets {
            reply.skipped.far_behind += useful.len() as u64;
            reply.request_keyframe = true;
            return reply;
        }
        for seq in useful {
            let Some(entry) = history.entry_mut(seq) else {
                continue;
            };
            let cost = entry.packet.wire_size() as f64;
            if cost > self.tokens {
                reply.skipped.over_budget += 1;
                continue;
            }
            self.tokens -= cost;
            entry.resent_at = Some(now);
            reply.resend.push(entry.packet.clone());
        }
        reply
    }
}

/// The answer to one NACK.
#[derive(Debug, Default)]
pub struct NackReply {
    pub resend: Vec<RtpPacket>,
    /// Ask the track's publisher (through the subscriber's throttle) for a keyframe.
    pub request_keyframe: bool,
    pub skipped: RepairSkips,
}

/// NACKed packets not resent, by reason (for metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RepairSkips {
    pub not_in_history: u64,
    pub too_old: u64,
    pub before_keyframe: u64,
    pub recently_resent: u64,
    pub over_budget: u64,
    pub far_behind: u64,
}

impl RepairSkips {
    fn count(&mut self, skip: Skip) {
        match skip {
            Skip::NotInHistory => self.not_in_history += 1,
            Skip::TooOld => self.too_old += 1,
            Skip::BeforeKeyframe => self.before_keyframe += 1,
            Skip::RecentlyResent => self.recently_resent += 1,
        }
    }
}

enum Skip {
    NotInHistory,
    TooOld,
    BeforeKeyframe,
    RecentlyResent,
}

#[derive(Debug, Clone)]
struct Entry {
    packet: RtpPacket,
    sent_at: Instant,
    resent_at: Option<Instant>,
}

/// What was sent on one outgoing video track, by the subscriber's sequence numbers.
#[derive(Debug)]
pub struct RepairHistory {
    codec: Codec,
    slots: Vec<Option<Entry>>,
    highest: Option<u16>,
    /// The first packet of the last keyframe sent.
    last_keyframe: Option<u16>,
}

impl RepairHistory {
    /// Keeps up to `capacity` packets (rounded up to a power of two).
    pub fn new(codec: Codec, capacity: usize) -> Self {
        let n = capacity.clamp(1, 1 << 15).next_power_of_two();
        Self {
            codec,
            slots: vec![None; n],
            highest: None,
            last_keyframe: None,
        }
    }

    fn index(&self, seq: u16) -> usize {
        seq as usize & (self.slots.len() - 1)
    }

    /// A packet was sent to the subscriber (as it left, rewritten).
    pub fn record_sent(&mut self, packet: RtpPacket, now: Instant) {
        let seq = packet.sequence_number;
        if let Some(h) = self.highest {
            let ahead = seq.wrapping_sub(h);
            if ahead == 0 {
                return;
            }
            if ahead >= 0x8000 && (h.wrapping_sub(seq) as usize) >= self.slots.len() {
                return; // older than the window
            }
            if ahead < 0x8000 {
                self.highest = Some(seq);
            }
        } else {
            self.highest = Some(seq);
        }
        let newer_keyframe = self
            .last_keyframe
            .is_none_or(|k| (seq.wrapping_sub(k) as i16) > 0);
        if newer_keyframe && self.codec.is_keyframe_start(&packet.payload) {
            self.last_keyframe = Some(seq);
        }
        let idx = self.index(seq);
        self.slots[idx] = Some(Entry {
            packet,
            sent_at: now,
            resent_at: None,
        });
    }

    fn entry_mut(&mut self, seq: u16) -> Option<&mut Entry> {
        let idx = self.index(seq);
        self.slots[idx]
            .as_mut()
            .filter(|e| e.packet.sequence_number == seq)
    }

    fn check(
        &mut self,
        seq: u16,
        now: Instant,
        max_age: Duration,
        rtt: Duration,
    ) -> Result<(), Skip> {
        let last_keyframe = self.last_keyframe;
        let Some(e) = self.entry_mut(seq) else {
            return Err(Skip::NotInHistory);
        };
        if now.saturating_duration_since(e.sent_at) > max_age {
            return Err(Skip::TooOld);
        }
        if last_keyframe.is_some_and(|k| (seq.wrapping_sub(k) as i16) < 0) {
            return Err(Skip::BeforeKeyframe);
        }
        if e.resent_at.is_some_and(|at| now < at + rtt) {
            return Err(Skip::RecentlyResent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(seq: u16, key: bool) -> RtpPacket {
        let mut payload = vec![0u8; 988]; // 1000 bytes on the wire
        payload[0] = 0x10;
        payload[1] = if key { 0x00 } else { 0x01 };
        RtpPacket {
            payload_type: 96,
            sequence_number: seq,
            timestamp: 0,
            ssrc: 1,
            marker: false,
            payload: Bytes::from(payload),
        }
    }

    fn history(from: u16, to: u16, at: Instant) -> RepairHistory {
        let mut h = RepairHistory::new(Codec::Vp8, 512);
        for s in from..to {
            h.record_sent(packet(s, s == from), at);
        }
        h
    }

    #[test]
    fn resends_within_a_share_of_the_estimate() {
        let t0 = Instant::now();
        let mut h = history(0, 200, t0);
        // 300 kbit/s estimate: 25 % is 9,375 bytes/s, 2,343 bytes of burst: two packets.
        let mut b = RepairBudget::new(RepairConfig::default(), 300_000);
        let r = b.handle_nack(&mut h, &[10, 11, 12, 13], t0);
        assert_eq!(r.resend.len(), 2);
        assert_eq!(r.skipped.over_budget, 2);
        assert!(!r.request_keyframe);
        // 300 ms later, 2,812 bytes more: the two others (the bucket holds 2,343 at most).
        let later = t0 + Duration::from_millis(300);
        let r = b.handle_nack(&mut h, &[12, 13], later);
        assert_eq!(r.resend.len(), 2);
        // Over a long run, resent bytes stay within the share.
        let mut h = RepairHistory::new(Codec::Vp8, 4096);
        let mut b = RepairBudget::new(RepairConfig::default(), 300_000);
        let mut resent = 0usize;
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(i as u64 * 10);
            let seq = i as u16;
            h.record_sent(packet(seq, false), now);
            resent += b
                .handle_nack(&mut h, &[seq], now)
                .resend
                .iter()
                .map(RtpPacket::wire_size)
                .sum::<usize>();
        }
        // 10 s at 9,375 bytes/s plus one burst.
        assert!(resent <= 93_750 + 2_343, "{resent} bytes resent");
        assert!(resent >= 90_000, "{resent} bytes resent");
    }

    #[test]
    fn never_resends_what_the_receiver_cannot_use() {
        let t0 = Instant::now();
        let mut h = history(100, 110, t0);
        h.record_sent(packet(110, true), t0); // a keyframe starts at 110
        h.record_sent(packet(111, false), t0);
        let mut b = RepairBudget::new(RepairConfig::default(), 10_000_000);
        let r = b.handle_nack(&mut h, &[105, 111, 500], t0);
        assert_eq!(r.skipped.before_keyframe, 1);
        assert_eq!(r.skipped.not_in_history, 1);
        assert_eq!(
            r.resend
                .iter()
                .map(|p| p.sequence_number)
                .collect::<Vec<_>>(),
            vec![111]
        );
        // Asked again within the round trip (100 ms): that copy is still on its way.
        let r = b.handle_nack(&mut h, &[111], t0 + Duration::from_millis(50));
        assert_eq!(r.skipped.recently_resent, 1);
        let r = b.handle_nack(&mut h, &[111], t0 + Duration::from_millis(150));
        assert_eq!(r.resend.len(), 1);
        b.handle_rtt(Duration::from_millis(400));
        let r = b.handle_nack(&mut h, &[111], t0 + Duration::from_millis(450));
        assert_eq!(r.skipped.recently_resent, 1);
        // Older than a second: the receiver has given up on it.
        let r = b.handle_nack(&mut h, &[111], t0 + Duration::from_millis(1200));
        assert_eq!(r.skipped.too_old, 1);
    }

    #[test]
    fn far_behind_gets_one_keyframe_not_thousands_of_packets() {
        let t0 = Instant::now();
        let mut h = history(0, 300, t0);
        let mut b = RepairBudget::new(RepairConfig::default(), 10_000_000);
        let lost: Vec<u16> = (1..200).collect();
        let r = b.handle_nack(&mut h, &lost, t0);
        assert!(r.resend.is_empty());
        assert!(r.request_keyframe);
        assert_eq!(r.skipped.far_behind, 199);
    }
}
