//! A gap-free mapping of one wrapping counter onto another: RTP sequence numbers (16 bits) and
//! VP8 picture ids (15 bits) for one consumer.
//!
//! The output counter continues across source switches (a new simulcast layer starts at
//! arbitrary numbers) and skips nothing when the forwarder drops on purpose (a temporal layer
//! above the consumer's budget, padding): a dropped value shifts every later one down by one, so
//! the receiver never sees a hole it would NACK or wait for. Values that were missing on input
//! (lost before they reached us) stay holes, so the receiver still asks for them and a late
//! arrival still finds its place.
//!
//! Owns only the arithmetic; it does not decide what to drop. No I/O, no time.

use std::collections::VecDeque;

/// At most this many deliberate drops are remembered for placing late packets; older ones are
/// folded into the offset and packets from before them are refused as too old. At a typical
/// 30 % of packets dropped that is several seconds of video, far beyond any useful reordering.
const REMEMBERED_DROPS: usize = 1024;

#[derive(Debug, Clone)]
pub struct CounterMap {
    bits: u32,
    /// Per source: where it starts, its highest value, the drops inside it.
    source: Option<Source>,
    /// Highest output value, extended (never wraps in practice), once anything went out.
    last_out: Option<u64>,
}

#[derive(Debug, Clone)]
struct Source {
    /// The first extended input of this source; older values are refused.
    start: u64,
    highest: u64,
    /// `out = in + base - (drops before in)`, all wrapping in u64.
    base: u64,
    /// Deliberately dropped extended inputs, ascending.
    dropped: VecDeque<u64>,
}

/// What happened to one input value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// Send it with this output value.
    Out(u64),
    /// Older than the current source or than what is remembered: its place is gone.
    TooOld,
    /// It was dropped deliberately before (a duplicate of a dropped value).
    Dropped,
}

impl CounterMap {
    /// A map for a counter of `bits` bits (16 for sequence numbers, 15 for picture ids).
    pub fn new(bits: u32) -> Self {
        debug_assert!((1..=32).contains(&bits));
        Self {
            bits,
            source: None,
            last_out: None,
        }
    }

    fn modulus(&self) -> u64 {
        1u64 << self.bits
    }

    /// The last output value, wrapped to the counter's width.
    pub fn last_out(&self) -> Option<u64> {
        self.last_out.map(|v| v & (self.modulus() - 1))
    }

    /// Continue an output stream that ended at `last` (wrapped) before this map's first value.
    pub fn continue_after(&mut self, last: u64) {
        if self.last_out.is_none() && self.source.is_none() {
            // Start high so that extended values never go below zero.
            self.last_out = Some((last & (self.modulus() - 1)) + (self.modulus() << 16));
        }
    }

    /// Forget the current source: the next value mapped starts a new one, following the last
    /// output value.
    pub fn reset_source(&mut self) {
        self.source = None;
    }

    pub fn has_source(&self) -> bool {
        self.source.is_some()
    }

    /// Extends a wrapped input value relative to the source's highest one.
    fn extend(&self, source: &Source, value: u64) -> u64 {
        let m = self.modulus();
        let half = m / 2;
        let diff = value.wrapping_sub(source.highest) & (m - 1);
        if diff < half {
            source.highest + diff
        } else {
            source.highest.wrapping_sub(m - diff)
        }
    }

    fn start_source(&mut self, value: u64) -> Source {
        let m = self.modulus();
        let ext = (value & (m - 1)) + (m << 16);
        let want = match self.last_out {
            Some(last) => last + 1,
            None => ext,
        };
        Source {
            start: ext,
            highest: ext,
            base: want.wrapping_sub(ext),
            dropped: VecDeque::new(),
        }
    }

    /// Maps `value` (wrapped) to its output value (wrapped), starting a new source if there is
    /// none.
    pub fn map(&mut self, value: u64) -> Mapped {
        let mut source = match self.source.take() {
            Some(s) => s,
            None => self.start_source(value),
        };
        let ext = self.extend(&source, value);
        let result = if ext < source.start {
            Mapped::TooOld
        } else if ext >= source.highest {
            // The common case: in order. Every remembered drop lies before it.
            source.highest = ext;
            Mapped::Out(
                ext.wrapping_add(source.base)
                    .wrapping_sub(source.dropped.len() as u64),
            )
        } else {
            let before = source.dropped.partition_point(|&d| d < ext);
            if source.dropped.get(before) == Some(&ext) {
                Mapped::Dropped
            } else {
                Mapped::Out(ext.wrapping_add(source.base).wrapping_sub(before as u64))
            }
        };
        if let Mapped::Out(out) = result {
            if self.last_out.is_none_or(|l| out > l) {
                self.last_out = Some(out);
            }
        }
        self.source = Some(source);
        match result {
            Mapped::Out(out) => Mapped::Out(out & (self.modulus() - 1)),
            other => other,
        }
    }

    /// `value` is dropped on purpose. When it is the newest value so far, every later value
    /// moves down by one so no hole is left; an older one (it arrived late, after its
    /// successors were sent) keeps its hole. Returns whether the drop left no hole.
    pub fn drop_value(&mut self, value: u64) -> bool {
        let mut source = match self.source.take() {
            Some(s) => s,
            None => {
                // Dropping before anything was sent from this source: start it here so that
                // the first value sent follows the last output without a hole.
                let mut s = self.start_source(value);
                let ext = s.start;
                s.dropped.push_back(ext);
                self.source = Some(s);
                return true;
            }
        };
        let ext = self.extend(&source, value);
        let compacted = if ext > source.highest {
            source.highest = ext;
            source.dropped.push_back(ext);
            if source.dropped.len() > REMEMBERED_DROPS {
                // Fold the oldest drop into the base and refuse anything from before it.
                let oldest = source.dropped.pop_front().expect("longer than the limit");
                source.base = source.base.wrapping_sub(1);
                source.start = source.start.max(oldest + 1);
            }
            true
        } else {
            // Already dropped (another packet of the same picture) counts as compacted.
            source.dropped.back() == Some(&ext)
        };
        self.source = Some(source);
        compacted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(m: &mut CounterMap, v: u64) -> u64 {
        match m.map(v) {
            Mapped::Out(o) => o,
            other => panic!("{v} mapped to {other:?}"),
        }
    }

    #[test]
    fn first_source_passes_through() {
        let mut m = CounterMap::new(16);
        assert_eq!(out(&mut m, 100), 100);
        assert_eq!(out(&mut m, 101), 101);
        assert_eq!(out(&mut m, 103), 103, "an input hole stays a hole");
        assert_eq!(out(&mut m, 102), 102, "and a late packet fills it");
    }

    #[test]
    fn drops_leave_no_hole_and_late_packets_keep_their_place() {
        let mut m = CounterMap::new(16);
        assert_eq!(out(&mut m, 10), 10);
        // 11 is lost on the way in; 12 and 13 are dropped on purpose.
        assert!(m.drop_value(12));
        assert!(m.drop_value(13));
        assert_eq!(out(&mut m, 14), 12);
        assert_eq!(out(&mut m, 15), 13);
        // 11 arrives late: it keeps the hole the receiver saw (between 10 and 12).
        assert_eq!(out(&mut m, 11), 11);
        assert_eq!(m.map(13), Mapped::Dropped);
        assert_eq!(out(&mut m, 16), 14);
    }

    #[test]
    fn wraps_on_input_and_output() {
        let mut m = CounterMap::new(16);
        assert_eq!(out(&mut m, 65534), 65534);
        assert!(m.drop_value(65535));
        assert_eq!(out(&mut m, 0), 65535);
        assert_eq!(out(&mut m, 1), 0);
        let mut p = CounterMap::new(15);
        assert_eq!(out(&mut p, 32767), 32767);
        assert_eq!(out(&mut p, 0), 0);
    }

    #[test]
    fn a_new_source_follows_the_last_output() {
        let mut m = CounterMap::new(16);
        out(&mut m, 500);
        out(&mut m, 501);
        m.reset_source();
        assert_eq!(out(&mut m, 9000), 502);
        assert_eq!(out(&mut m, 9001), 503);
        assert_eq!(m.map(8999), Mapped::TooOld, "from before the switch");
        // Dropping the very first packets of a source leaves no hole either.
        m.reset_source();
        assert!(m.drop_value(40));
        assert!(m.drop_value(41));
        assert_eq!(out(&mut m, 42), 504);
    }

    #[test]
    fn continues_a_stream_ended_elsewhere() {
        let mut m = CounterMap::new(16);
        m.continue_after(65535);
        assert_eq!(out(&mut m, 7), 0);
        assert_eq!(m.last_out(), Some(0));
    }

    #[test]
    fn old_drops_are_forgotten_without_shifting_newer_values() {
        let mut m = CounterMap::new(16);
        out(&mut m, 0);
        let mut next_out = 1;
        let mut v = 1u64;
        for _ in 0..(REMEMBERED_DROPS + 10) {
            assert!(m.drop_value(v));
            v += 1;
            assert_eq!(out(&mut m, v), next_out);
            next_out += 1;
            v += 1;
        }
        assert_eq!(m.map(1), Mapped::TooOld);
        assert_eq!(out(&mut m, v), next_out);
    }
}
