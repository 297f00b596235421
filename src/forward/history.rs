//! What was sent to one consumer recently, by the sequence number the subscriber saw, so that
//! its NACKs can be answered. A fixed ring indexed by sequence number: O(1) insert and lookup,
//! and packets arriving out of order (late retransmissions from the publisher) neither move the
//! window backwards nor evict anything newer.

use super::RtpPacket;

#[derive(Debug)]
pub struct SendHistory {
    slots: Vec<Option<RtpPacket>>,
    /// Highest sequence number stored, once anything is.
    highest: Option<u16>,
}

impl SendHistory {
    /// Keeps up to `capacity` packets (rounded up to a power of two).
    pub fn new(capacity: usize) -> Self {
        let n = capacity.clamp(1, 1 << 15).next_power_of_two();
        Self {
            slots: vec![None; n],
            highest: None,
        }
    }

    fn index(&self, seq: u16) -> usize {
        seq as usize & (self.slots.len() - 1)
    }

    pub fn insert(&mut self, packet: RtpPacket) {
        let seq = packet.sequence_number;
        match self.highest {
            Some(h) => {
                let ahead = seq.wrapping_sub(h);
                if ahead == 0 {
                    return;
                }
                if ahead < 0x8000 {
                    // Newer: forget the slots we skip over (they belonged to older packets).
                    let skipped = (ahead as usize - 1).min(self.slots.len());
                    for i in 1..=skipped {
                        let idx = self.index(h.wrapping_add(i as u16));
                        self.slots[idx] = None;
                    }
                    self.highest = Some(seq);
                } else if (h.wrapping_sub(seq) as usize) >= self.slots.len() {
                    return; // older than the window
                }
            }
            None => self.highest = Some(seq),
        }
        let idx = self.index(seq);
        self.slots[idx] = Some(packet);
    }

    pub fn get(&self, seq: u16) -> Option<&RtpPacket> {
        self.slots[self.index(seq)]
            .as_ref()
            .filter(|p| p.sequence_number == seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn p(seq: u16) -> RtpPacket {
        RtpPacket {
            payload_type: 96,
            sequence_number: seq,
            timestamp: 0,
            ssrc: 1,
            marker: false,
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn keeps_recent_packets_and_forgets_old_ones() {
        let mut h = SendHistory::new(8);
        for s in 0..20 {
            h.insert(p(s));
        }
        assert!(h.get(19).is_some());
        assert!(h.get(12).is_some());
        assert!(h.get(11).is_none(), "outside the window");
        assert!(h.get(20).is_none(), "never sent");
    }

    #[test]
    fn a_late_packet_is_stored_without_evicting_newer_ones() {
        let mut h = SendHistory::new(16);
        h.insert(p(10));
        h.insert(p(12));
        h.insert(p(13));
        h.insert(p(11)); // the retransmission of 11 arrived late
        h.insert(p(14));
        for s in 10..=14 {
            assert!(h.get(s).is_some(), "{s} is kept");
        }
    }

    #[test]
    fn works_across_sequence_wrap_and_gaps() {
        let mut h = SendHistory::new(16);
        h.insert(p(65534));
        h.insert(p(65535));
        h.insert(p(3)); // 0, 1, 2 skipped
        assert!(h.get(65535).is_some());
        assert!(h.get(0).is_none());
        assert!(h.get(3).is_some());
        h.insert(p(1));
        assert!(h.get(1).is_some());
        // A jump larger than the window clears everything older.
        h.insert(p(1000));
        assert!(h.get(3).is_none());
        assert!(h.get(1000).is_some());
    }
}
