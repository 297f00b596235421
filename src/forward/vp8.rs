//! The VP8 RTP payload descriptor (RFC 7741 §4.2): parsing it, and keeping one consumer's
//! picture ids, TL0PICIDX and KEYIDX continuous.
//!
//! A subscriber's decoder checks the picture id for missing frames and TL0PICIDX for missing
//! base-layer frames. When the forwarder switches simulcast layers (each layer counts on its
//! own) or drops temporal-layer frames on purpose, the numbers it passes on must still count up
//! one by one, or the receiver waits for frames that will never come and asks for keyframes.
//! [`Vp8Munger`] owns that renumbering; [`Vp8Descriptor::parse`] never panics on any input.
//! The rewritten values keep the packet's field widths (a 7-bit picture id stays 7 bits), so
//! the payload is patched in place and never changes length.

use bytes::{Bytes, BytesMut};

use super::compact::{CounterMap, Mapped};

/// What the forwarder needs from a VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// S: this packet starts a VP8 partition.
    pub start_of_partition: bool,
    /// PID: the partition this packet belongs to.
    pub partition_index: u8,
    /// S with PID 0: the first packet of a frame.
    pub frame_start: bool,
    /// The first packet of a keyframe (frame start and the payload header's P bit clear).
    pub keyframe: bool,
    pub picture_id: Option<u16>,
    /// The picture id takes 15 bits (M bit) rather than 7.
    pub picture_id_long: bool,
    pub tl0_pic_idx: Option<u8>,
    /// TID: the temporal layer of this frame.
    pub temporal_id: Option<u8>,
    /// Y: this frame depends only on base-layer frames, so a receiver may start taking its
    /// temporal layer here.
    pub layer_sync: bool,
    pub key_idx: Option<u8>,
    /// Where each rewritable field sits in the payload (0: absent).
    picture_id_at: usize,
    tl0_at: usize,
    tid_key_at: usize,
}

impl Vp8Descriptor {
    /// Parses the descriptor at the start of `payload`; `None` when it is truncated.
    pub fn parse(payload: &[u8]) -> Option<Vp8Descriptor> {
        let first = *payload.first()?;
        let mut d = Vp8Descriptor {
            start_of_partition: first & 0x10 != 0,
            partition_index: first & 0x07,
            ..Default::default()
        };
        d.frame_start = d.start_of_partition && d.partition_index == 0;
        let mut at = 1;
        if first & 0x80 != 0 {
            let ext = *payload.get(at)?;
            at += 1;
            if ext & 0x80 != 0 {
                let high = *payload.get(at)?;
                d.picture_id_at = at;
                if high & 0x80 != 0 {
                    let low = *payload.get(at + 1)?;
                    d.picture_id = Some(u16::from_be_bytes([high & 0x7f, low]));
                    d.picture_id_long = true;
                    at += 2;
                } else {
                    d.picture_id = Some(high as u16);
                    at += 1;
                }
            }
            if ext & 0x40 != 0 {
                d.tl0_pic_idx = Some(*payload.get(at)?);
                d.tl0_at = at;
                at += 1;
            }
            let has_tid = ext & 0x20 != 0;
            let has_key_idx = ext & 0x10 != 0;
            if has_tid || has_key_idx {
                let b = *payload.get(at)?;
                d.tid_key_at = at;
                if has_tid {
                    d.temporal_id = Some(b >> 6);
                    d.layer_sync = b & 0x20 != 0;
                }
                if has_key_idx {
                    d.key_idx = Some(b & 0x1f);
                }
                at += 1;
            }
        }
        // The VP8 payload header follows on a frame's first packet; its P bit is 0 on keyframes.
        if d.frame_start {
            d.keyframe = payload.get(at).is_some_and(|h| h & 0x01 == 0);
        }
        Some(d)
    }

    /// `payload` (which this descriptor was parsed from) with the given fields written in.
    /// Shares the input's bytes when nothing changes.
    pub fn rewrite(&self, payload: &Bytes, fields: Vp8Fields) -> Bytes {
        let same = fields.picture_id == self.picture_id
            && fields.tl0_pic_idx == self.tl0_pic_idx
            && fields.key_idx == self.key_idx;
        if same {
            return payload.clone();
        }
        let mut out = BytesMut::from(&payload[..]);
        if let (Some(pid), true) = (fields.picture_id, self.picture_id_at != 0) {
            if self.picture_id_long {
                out[self.picture_id_at] = 0x80 | ((pid >> 8) as u8 & 0x7f);
                out[self.picture_id_at + 1] = pid as u8;
            } else {
                out[self.picture_id_at] = pid as u8 & 0x7f;
            }
        }
        if let (Some(v), true) = (fields.tl0_pic_idx, self.tl0_at != 0) {
            out[self.tl0_at] = v;
        }
        if let (Some(k), true) = (fields.key_idx, self.tid_key_at != 0) {
            out[self.tid_key_at] = (out[self.tid_key_at] & 0xe0) | (k & 0x1f);
        }
        out.freeze()
    }
}

/// The renumbered fields for one outgoing packet (`None`: the packet has no such field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Fields {
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
    pub key_idx: Option<u8>,
}

/// One consumer's VP8 renumbering. Call [`Self::reset_source`] at a layer switch (the next
/// packet is the new layer's keyframe), [`Self::drop_frame`] for every packet dropped on
/// purpose, and [`Self::map`] for every packet sent.
#[derive(Debug, Clone)]
pub struct Vp8Munger {
    /// Picture ids, counted at the width the current source uses (7 or 15 bits).
    picture_ids: CounterMap,
    picture_ids_long: bool,
    /// TL0PICIDX and KEYIDX of the current source: out = in + offset. Base-layer frames are
    /// never dropped on purpose, so a plain offset keeps TL0PICIDX continuous.
    tl0_offset: Option<u8>,
    key_idx_offset: Option<u8>,
    last_tl0: Option<u8>,
    last_key_idx: Option<u8>,
}

impl Default for Vp8Munger {
    fn default() -> Self {
        Self::new()
    }
}

impl Vp8Munger {
    pub fn new() -> Self {
        Self {
            picture_ids: CounterMap::new(15),
            picture_ids_long: true,
            tl0_offset: None,
            key_idx_offset: None,
            last_tl0: None,
            last_key_idx: None,
        }
    }

    /// A source that switches between 7- and 15-bit picture ids (allowed, if rare): count on
    /// at the new width from where the output stood.
    fn use_width_of(&mut self, d: &Vp8Descriptor) {
        if d.picture_id.is_none() || d.picture_id_long == self.picture_ids_long {
            return;
        }
        let last = self.picture_ids.last_out();
        self.picture_ids_long = d.picture_id_long;
        self.picture_ids = CounterMap::new(if d.picture_id_long { 15 } else { 7 });
        if let Some(last) = last {
            self.picture_ids.continue_after(last);
        }
    }

    /// The next packet comes from another source (a simulcast layer switch, at its keyframe).
    pub fn reset_source(&mut self) {
        self.picture_ids.reset_source();
        self.tl0_offset = None;
        self.key_idx_offset = None;
    }

    /// A packet of this descriptor's frame is dropped on purpose: the frame's picture id is
    /// taken out of the output numbering.
    pub fn drop_frame(&mut self, d: &Vp8Descriptor) {
        self.use_width_of(d);
        if let Some(pid) = d.picture_id {
            self.picture_ids.drop_value(pid as u64);
        }
    }

    /// The fields to write into a packet that is sent; `None` when its picture is from before
    /// the current source or was dropped (then the packet must not be sent either).
    pub fn map(&mut self, d: &Vp8Descriptor) -> Option<Vp8Fields> {
        self.use_width_of(d);
        let picture_id = match d.picture_id {
            None => None,
            Some(pid) => match self.picture_ids.map(pid as u64) {
                Mapped::Out(out) => Some(out as u16),
                Mapped::TooOld | Mapped::Dropped => return None,
            },
        };
        let tl0_pic_idx = d.tl0_pic_idx.map(|v| {
            let offset = *self.tl0_offset.get_or_insert_with(|| match self.last_tl0 {
                // A new source's first base-layer index follows the last one sent.
                Some(last) => last.wrapping_add(1).wrapping_sub(v),
                None => 0,
            });
            let out = v.wrapping_add(offset);
            if self
                .last_tl0
                .is_none_or(|l| (out.wrapping_sub(l) as i8) > 0)
            {
                self.last_tl0 = Some(out);
            }
            out
        });
        let key_idx = d.key_idx.map(|k| {
            let offset = *self
                .key_idx_offset
                .get_or_insert_with(|| match self.last_key_idx {
                    Some(last) => last.wrapping_add(1).wrapping_sub(k) & 0x1f,
                    None => 0,
                });
            let out = k.wrapping_add(offset) & 0x1f;
            self.last_key_idx = Some(out);
            out
        });
        Some(Vp8Fields {
            picture_id,
            tl0_pic_idx,
            key_idx,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A VP8 payload: descriptor with a 15-bit picture id, TL0PICIDX and TID/Y, then a
    /// payload header byte (keyframe or not) and some data.
    pub(crate) fn vp8_payload(
        frame_start: bool,
        keyframe: bool,
        picture_id: u16,
        tl0: u8,
        tid: u8,
        sync: bool,
    ) -> Bytes {
        let s = if frame_start { 0x10 } else { 0x00 };
        let tid_byte = (tid << 6) | if sync { 0x20 } else { 0 };
        Bytes::from(vec![
            0x80 | s,
            0xe0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            tid_byte,
            if keyframe { 0x00 } else { 0x01 },
            0xaa,
            0xbb,
        ])
    }

    #[test]
    fn parses_every_field() {
        let p = vp8_payload(true, true, 0x1234, 9, 2, true);
        let d = Vp8Descriptor::parse(&p).unwrap();
        assert!(d.frame_start && d.keyframe);
        assert_eq!(d.picture_id, Some(0x1234));
        assert!(d.picture_id_long);
        assert_eq!(d.tl0_pic_idx, Some(9));
        assert_eq!(d.temporal_id, Some(2));
        assert!(d.layer_sync);
        assert_eq!(d.key_idx, None);
        // Short picture id, KEYIDX only, not a frame start.
        let d = Vp8Descriptor::parse(&[0x80, 0x90, 0x05, 0x13, 0x01]).unwrap();
        assert_eq!(d.picture_id, Some(5));
        assert!(!d.picture_id_long);
        assert_eq!(d.key_idx, Some(0x13));
        assert_eq!(d.temporal_id, None);
        assert!(!d.frame_start && !d.keyframe);
        // No extension at all: a keyframe start.
        let d = Vp8Descriptor::parse(&[0x10, 0x00]).unwrap();
        assert!(d.keyframe && d.picture_id.is_none());
    }

    #[test]
    fn truncated_descriptors_are_refused_and_never_panic() {
        for bad in [
            &[][..],
            &[0x80],
            &[0x80, 0x80],
            &[0x80, 0x80, 0x80],
            &[0x80, 0x40],
            &[0x80, 0x20],
        ] {
            assert_eq!(Vp8Descriptor::parse(bad), None, "{bad:?}");
        }
        // Every prefix of a full descriptor, and every byte value in every position.
        let full = vp8_payload(true, true, 300, 1, 1, false);
        for n in 0..full.len() {
            let _ = Vp8Descriptor::parse(&full[..n]);
        }
        for i in 0..6 {
            for b in 0..=255u8 {
                let mut p = full.to_vec();
                p[i] = b;
                if let Some(d) = Vp8Descriptor::parse(&p) {
                    let fields = Vp8Fields {
                        picture_id: d.picture_id.map(|v| v ^ 1),
                        tl0_pic_idx: d.tl0_pic_idx.map(|v| v ^ 1),
                        key_idx: d.key_idx.map(|v| v ^ 1),
                    };
                    let out = d.rewrite(&Bytes::from(p.clone()), fields);
                    assert_eq!(out.len(), p.len());
                }
            }
        }
    }

    #[test]
    fn rewrite_patches_in_place_and_shares_when_unchanged() {
        let p = vp8_payload(true, false, 0x7ffe, 200, 1, false);
        let d = Vp8Descriptor::parse(&p).unwrap();
        let same = d.rewrite(
            &p,
            Vp8Fields {
                picture_id: d.picture_id,
                tl0_pic_idx: d.tl0_pic_idx,
                key_idx: None,
            },
        );
        assert_eq!(same.as_ptr(), p.as_ptr(), "no copy when nothing changes");
        let out = d.rewrite(
            &p,
            Vp8Fields {
                picture_id: Some(3),
                tl0_pic_idx: Some(7),
                key_idx: None,
            },
        );
        let back = Vp8Descriptor::parse(&out).unwrap();
        assert_eq!(back.picture_id, Some(3));
        assert!(back.picture_id_long);
        assert_eq!(back.tl0_pic_idx, Some(7));
        assert_eq!(back.temporal_id, Some(1));
        assert_eq!(&out[6..], &p[6..], "the VP8 payload is untouched");
    }

    fn desc(pid: u16, tl0: u8, tid: u8) -> Vp8Descriptor {
        Vp8Descriptor::parse(&vp8_payload(true, false, pid, tl0, tid, false)).unwrap()
    }

    #[test]
    fn picture_ids_and_tl0_continue_across_a_source_switch() {
        let mut m = Vp8Munger::new();
        let a = m.map(&desc(100, 50, 0)).unwrap();
        assert_eq!((a.picture_id, a.tl0_pic_idx), (Some(100), Some(50)));
        m.map(&desc(101, 50, 1)).unwrap();
        m.reset_source();
        // The new layer counts on its own, far away, and wraps TL0PICIDX soon.
        let b = m.map(&desc(30_000, 255, 0)).unwrap();
        assert_eq!((b.picture_id, b.tl0_pic_idx), (Some(102), Some(51)));
        let c = m.map(&desc(30_001, 0, 0)).unwrap();
        assert_eq!((c.picture_id, c.tl0_pic_idx), (Some(103), Some(52)));
        assert_eq!(
            m.map(&desc(29_999, 254, 0)),
            None,
            "from before the new source's start"
        );
    }

    #[test]
    fn dropped_frames_leave_no_picture_id_gap() {
        let mut m = Vp8Munger::new();
        // L1T3 pattern: tid 0, 2, 1, 2, 0 ... ; drop tid 2.
        let frames = [
            (10, 0),
            (11, 2),
            (12, 1),
            (13, 2),
            (14, 0),
            (15, 2),
            (16, 1),
        ];
        let mut sent = Vec::new();
        for (pid, tid) in frames {
            let d = desc(pid, 0, tid);
            if tid == 2 {
                m.drop_frame(&d);
                m.drop_frame(&d); // a second packet of the same frame
            } else {
                sent.push(m.map(&d).unwrap().picture_id.unwrap());
            }
        }
        assert_eq!(sent, vec![10, 11, 12, 13]);
    }

    #[test]
    fn short_picture_ids_wrap_at_seven_bits() {
        let mut m = Vp8Munger::new();
        let d = |pid: u8| Vp8Descriptor::parse(&[0x90, 0x80, pid, 0x01]).unwrap();
        assert_eq!(m.map(&d(127)).unwrap().picture_id, Some(127));
        assert_eq!(m.map(&d(0)).unwrap().picture_id, Some(0));
    }
}
