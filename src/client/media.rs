//! Synthetic media with verifiable payloads.
//!
//! Every payload carries a header `PLZ | tag u32 | counter u64 | sent_at_us u64` followed by
//! filler derived from (tag, counter), so a receiver can recompute what the payload must be.
//! Video payloads start with a VP8 payload descriptor (and, on a frame's first packet, the VP8
//! payload header whose P bit tells keyframes from interframes).

use std::time::{SystemTime, UNIX_EPOCH};

pub const MAGIC: &[u8; 3] = b"PLZ";
const BODY_HEADER: usize = 3 + 4 + 8 + 8;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn filler(tag: u32, counter: u64, i: usize) -> u8 {
    (counter as usize)
        .wrapping_mul(31)
        .wrapping_add(i)
        .wrapping_add(tag as usize) as u8
}

fn body(tag: u32, counter: u64, size: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&tag.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(&now_us().to_be_bytes());
    let n = size.saturating_sub(BODY_HEADER);
    out.extend((0..n).map(|i| filler(tag, counter, i)));
}

/// One audio payload of `size` bytes.
pub fn audio_payload(tag: u32, counter: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    body(tag, counter, size, &mut v);
    v
}

/// One video packet's payload: VP8 descriptor (+ payload header on a frame start), then body.
pub fn video_payload(
    tag: u32,
    counter: u64,
    frame_start: bool,
    keyframe: bool,
    size: usize,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(size + 2);
    if frame_start {
        v.push(0x10); // S=1, partition 0
        v.push(if keyframe { 0x00 } else { 0x01 }); // P bit clear on keyframes
    } else {
        v.push(0x00);
    }
    body(tag, counter, size, &mut v);
    v
}

/// What a receiver learns from one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub tag: u32,
    pub counter: u64,
    pub sent_at_us: u64,
    pub keyframe_start: bool,
    /// The payload is exactly what the sender generated.
    pub intact: bool,
}

pub fn parse(payload: &[u8], video: bool) -> Option<Parsed> {
    let (prefix, keyframe_start) = if video {
        let first = *payload.first()?;
        if first & 0x10 != 0 {
            (2, payload.get(1)? & 0x01 == 0)
        } else {
            (1, false)
        }
    } else {
        (0, false)
    };
    let b = payload.get(prefix..)?;
    if b.len() < BODY_HEADER || &b[..3] != MAGIC {
        return None;
    }
    let tag = u32::from_be_bytes(b[3..7].try_into().ok()?);
    let counter = u64::from_be_bytes(b[7..15].try_into().ok()?);
    let sent_at_us = u64::from_be_bytes(b[15..23].try_into().ok()?);
    let intact = b[BODY_HEADER..]
        .iter()
        .enumerate()
        .all(|(i, &x)| x == filler(tag, counter, i));
    Some(Parsed {
        tag,
        counter,
        sent_at_us,
        keyframe_start,
        intact,
    })
}
