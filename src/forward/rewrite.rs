//! Sequence-number and timestamp rewriting for one consumer.
//!
//! The subscriber sees one continuous stream per track even though what we forward starts in
//! the middle of the publisher's stream, skips packets while waiting for a keyframe, and may
//! switch to another source (a new SSRC after a publisher restarts). On every (re)start we
//! rebase so that the first packet out follows the last one we sent: sequence numbers +1, the
//! timestamp advanced by the wall-clock time that passed. All arithmetic wraps.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SeqTsRewriter {
    clock_rate: u32,
    /// Set once the first packet has been forwarded.
    last_out: Option<LastOut>,
    /// Offsets of the current source; `None` until rebased onto one.
    offsets: Option<Offsets>,
}

/// The end of an output stream, carried from one consumer to the next on a recycled
/// transceiver (see [`SeqTsRewriter::continuation`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Continuation {
    last_out: Option<LastOut>,
}

impl Continuation {
    /// Where a stream ended: its last sequence number and timestamp, and when it was sent.
    pub(crate) fn new(seq: u16, ts: u32, at: Instant) -> Self {
        Self {
            last_out: Some(LastOut { seq, ts, at }),
        }
    }

    /// The last sequence number, timestamp and send time, when anything was sent.
    pub(crate) fn last(&self) -> Option<(u16, u32, Instant)> {
        self.last_out.map(|l| (l.seq, l.ts, l.at))
    }
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u16,
    ts: u32,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Offsets {
    seq: u16,
    ts: u32,
    /// The first input sequence number of this source; older packets (late retransmissions of
    /// what came before the switch) are refused, since their output numbers are taken.
    start_seq: u16,
}

impl SeqTsRewriter {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            last_out: None,
            offsets: None,
        }
    }

    /// Forget the current source: the next packet passed to [`Self::rewrite`] starts anew.
    pub fn reset_source(&mut self) {
        self.offsets = None;
    }

    pub fn has_source(&self) -> bool {
        self.offsets.is_some()
    }

    /// Where this consumer's output stream stands, so that another consumer writing to the
    /// same outgoing stream later (a recycled transceiver: same SSRC at the subscriber) can go
    /// on from it.
    pub fn continuation(&self) -> Continuation {
        Continuation {
            last_out: self.last_out,
        }
    }

    /// Goes on from a stream another rewriter wrote: the first packet out follows that
    /// stream's last one (sequence number +1, timestamp advanced by the time that passed), so
    /// the subscriber's jitter buffer sees one continuous stream on the reused SSRC. Only
    /// before this rewriter's first packet; a later call changes nothing.
    pub fn continue_from(&mut self, from: Continuation) {
        if self.last_out.is_none() && self.offsets.is_none() {
            self.last_out = from.last_out;
        }
    }

    /// Map one input packet's (seq, ts) to the output's, rebasing on the first packet of a source.
    /// Returns `None` for packets older than the start of the current source.
    pub fn rewrite(&mut self, seq: u16, ts: u32, now: Instant) -> Option<(u16, u32)> {
        let offsets = match self.offsets {
            Some(o) => {
                if (seq.wrapping_sub(o.start_seq) as i16) < 0 {
                    return None;
                }
                o
            }
            None => {
                let o = self.rebase(seq, ts, now);
                self.offsets = Some(o);
                o
            }
        };
        let out_seq = seq.wrapping_add(offsets.seq);
        let out_ts = ts.wrapping_add(offsets.ts);
        let newer = self
            .last_out
            .is_none_or(|l| (out_seq.wrapping_sub(l.seq) as i16) > 0);
        if newer {
            self.last_out = Some(LastOut {
                seq: out_seq,
                ts: out_ts,
                at: now,
            });
        }
        Some((out_seq, out_ts))
    }

    fn rebase(&self, seq: u16, ts: u32, now: Instant) -> Offsets {
        let (want_seq, want_ts) = match self.last_out {
            None => (seq, ts),
            Some(last) => {
                let elapsed = now.saturating_duration_since(last.at);
                // Advance by real time so that playout stays paced; at least one tick so the
                // new frame never shares a timestamp with the last one.
                let ticks = ticks_for(elapsed, self.clock_rate).max(1);
                (last.seq.wrapping_add(1), last.ts.wrapping_add(ticks))
            }
        };
        Offsets {
            seq: want_seq.wrapping_sub(seq),
            ts: want_ts.wrapping_sub(ts),
            start_seq: seq,
        }
    }
}

pub(crate) fn ticks_for(elapsed: Duration, clock_rate: u32) -> u32 {
    let ticks = elapsed.as_micros() * clock_rate as u128 / 1_000_000;
    ticks.min(u32::MAX as u128 / 2) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_source_passes_through_unchanged() {
        let now = Instant::now();
        let mut r = SeqTsRewriter::new(90_000);
        assert_eq!(r.rewrite(1000, 5000, now), Some((1000, 5000)));
        assert_eq!(r.rewrite(1001, 8000, now), Some((1001, 8000)));
    }

    #[test]
    fn sequence_and_timestamp_wrap_around() {
        let now = Instant::now();
        let mut r = SeqTsRewriter::new(90_000);
        assert_eq!(
            r.rewrite(65535, u32::MAX - 10, now),
            Some((65535, u32::MAX - 10))
        );
        assert_eq!(r.rewrite(0, 3000 - 11, now), Some((0, 3000 - 11)));
        assert_eq!(r.rewrite(1, 5989, now), Some((1, 5989)));
    }

    #[test]
    fn a_new_source_continues_where_the_old_one_stopped() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(90_000);
        r.rewrite(65534, 100, t0);
        r.rewrite(65535, 3100, t0);
        r.reset_source();
        // The new source starts at arbitrary numbers 100 ms later.
        let t1 = t0 + Duration::from_millis(100);
        let (seq, ts) = r.rewrite(4242, 777_777, t1).unwrap();
        assert_eq!(seq, 0, "sequence continues across the wrap");
        assert_eq!(
            ts,
            3100 + 9000,
            "timestamp advances by the 100 ms that passed"
        );
        assert_eq!(r.rewrite(4243, 777_777 + 3000, t1), Some((1, 3100 + 12000)));
    }

    #[test]
    fn packets_from_before_a_switch_are_refused() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(48_000);
        r.rewrite(10, 0, t0);
        r.reset_source();
        r.rewrite(500, 0, t0).unwrap();
        assert_eq!(r.rewrite(499, 0, t0), None);
        assert!(r.rewrite(501, 960, t0).is_some());
    }

    #[test]
    fn late_packets_keep_their_place_without_moving_the_high_water_mark() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(90_000);
        r.rewrite(10, 0, t0);
        r.rewrite(12, 0, t0);
        // A retransmission of 11 arrives late: same offset, so the subscriber's NACK is served.
        assert_eq!(r.rewrite(11, 0, t0), Some((11, 0)));
        r.reset_source();
        let (seq, _) = r.rewrite(50, 0, t0).unwrap();
        assert_eq!(
            seq, 13,
            "continues after the highest sent, not the late one"
        );
    }

    #[test]
    fn rebase_always_advances_the_timestamp() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(90_000);
        r.rewrite(1, 1000, t0);
        r.reset_source();
        assert_eq!(r.rewrite(9, 1, t0), Some((2, 1001)));
    }

    #[test]
    fn a_continued_stream_follows_the_one_it_replaces() {
        let t0 = Instant::now();
        let mut first = SeqTsRewriter::new(90_000);
        first.rewrite(100, 9_000, t0);
        first.rewrite(101, 12_000, t0);
        let mut next = SeqTsRewriter::new(90_000);
        next.continue_from(first.continuation());
        // A different publisher, much later: one continuous stream all the same.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            next.rewrite(40_000, 7, later),
            Some((102, 12_000 + 180_000))
        );
        assert_eq!(
            next.rewrite(40_001, 3_007, later),
            Some((103, 15_000 + 180_000))
        );
        // Continuing after the first packet would break the stream it already started.
        next.continue_from(SeqTsRewriter::new(90_000).continuation());
        assert_eq!(
            next.rewrite(40_002, 6_007, later),
            Some((104, 18_000 + 180_000))
        );
    }
}
