//! Media kinds and codecs, and the one question the core asks of a payload: does it start a
//! keyframe? Parsing never panics: short or malformed payloads are simply "not a keyframe".

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// The codecs whose bitstreams the core understands well enough to find keyframes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
    /// Anything else: forwarded, but every packet counts as a possible starting point.
    Other,
}

impl Codec {
    /// From an SDP mime type such as `video/VP8` (case-insensitive, as SDP is).
    pub fn from_mime(mime: &str) -> Codec {
        let sub = mime.rsplit('/').next().unwrap_or("").to_ascii_lowercase();
        match sub.as_str() {
            "opus" => Codec::Opus,
            "vp8" => Codec::Vp8,
            "vp9" => Codec::Vp9,
            "h264" => Codec::H264,
            "av1" => Codec::Av1,
            _ => Codec::Other,
        }
    }

    /// True when this packet begins a frame a decoder can start from.
    pub fn is_keyframe_start(self, payload: &[u8]) -> bool {
        match self {
            Codec::Vp8 => vp8_keyframe_start(payload),
            Codec::Vp9 => vp9_keyframe_start(payload),
            Codec::H264 => h264_has_keyframe(payload),
            Codec::Av1 => av1_new_sequence(payload),
            Codec::Opus | Codec::Other => true,
        }
    }
}

/// RFC 7741: payload descriptor, then the VP8 payload header whose P bit is 0 on keyframes.
fn vp8_keyframe_start(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let start_of_partition = first & 0x10 != 0;
    let partition_index = first & 0x07;
    if !start_of_partition || partition_index != 0 {
        return false;
    }
    let mut at = 1;
    if first & 0x80 != 0 {
        let Some(&ext) = p.get(at) else {
            return false;
        };
        at += 1;
        if ext & 0x80 != 0 {
            // PictureID: one byte, or two when its M bit is set.
            let Some(&pid) = p.get(at) else {
                return false;
            };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            at += 1; // TID / KEYIDX
        }
    }
    p.get(at).is_some_and(|header| header & 0x01 == 0)
}

/// The picture size a keyframe declares (RFC 6386 §9.1: after the 3-byte frame tag, the start
/// code `9d 01 2a`, then 14-bit width and height), from the packet that starts it. `None` for
/// anything else: other codecs, interframes, truncated or malformed payloads.
pub fn vp8_keyframe_size(p: &[u8]) -> Option<(u16, u16)> {
    if !vp8_keyframe_start(p) {
        return None;
    }
    // The descriptor's length again, now that it is known to be well formed.
    let mut at = 1;
    if p[0] & 0x80 != 0 {
        let ext = p[1];
        at += 1;
        if ext & 0x80 != 0 {
            at += if p[at] & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1;
        }
        if ext & 0x30 != 0 {
            at += 1;
        }
    }
    let header = p.get(at..at + 10)?;
    if header[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([header[6], header[7]]) & 0x3fff;
    let height = u16::from_le_bytes([header[8], header[9]]) & 0x3fff;
    Some((width, height))
}

/// RFC 9628: B (beginning of frame) set and P (inter-picture predicted) clear.
fn vp9_keyframe_start(p: &[u8]) -> bool {
    p.first().is_some_and(|&d| d & 0x08 != 0 && d & 0x40 == 0)
}

/// RFC 6184: an IDR slice or SPS alone, inside a STAP-A, or at the start of an FU-A.
fn h264_has_keyframe(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut at = 1;
            while at + 2 < p.len() {
                let size = u16::from_be_bytes([p[at], p[at + 1]]) as usize;
                let nal_type = p[at + 2] & 0x1f;
                if nal_type == IDR || nal_type == SPS {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        FU_A => p
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && matches!(fu & 0x1f, IDR | SPS)),
        _ => false,
    }
}

/// AV1 RTP spec: the N bit of the aggregation header marks the first packet of a coded video
/// sequence, which starts with a keyframe.
fn av1_new_sequence(p: &[u8]) -> bool {
    p.first().is_some_and(|&h| h & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_are_recognised_with_and_without_extended_descriptor() {
        // S=1, PID=0, no X; payload header P bit clear = keyframe.
        assert!(Codec::Vp8.is_keyframe_start(&[0x10, 0x00, 0x9d, 0x01, 0x2a]));
        // Same, P bit set = interframe.
        assert!(!Codec::Vp8.is_keyframe_start(&[0x10, 0x01]));
        // Not the start of a partition.
        assert!(!Codec::Vp8.is_keyframe_start(&[0x00, 0x00]));
        // X=1, I=1 with a 15-bit picture id (M bit), then the payload header.
        assert!(Codec::Vp8.is_keyframe_start(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        assert!(!Codec::Vp8.is_keyframe_start(&[0x90, 0x80, 0x81, 0x23, 0x01]));
        // X=1, I=1, L=1, T=1, 7-bit picture id.
        assert!(Codec::Vp8.is_keyframe_start(&[0x90, 0xe0, 0x05, 0x01, 0x00, 0x00]));
    }

    #[test]
    fn truncated_payloads_are_never_keyframes_and_never_panic() {
        for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1] {
            assert!(!codec.is_keyframe_start(&[]));
        }
        assert!(!Codec::Vp8.is_keyframe_start(&[0x90]));
        assert!(!Codec::Vp8.is_keyframe_start(&[0x90, 0x80, 0x81]));
        assert!(!Codec::H264.is_keyframe_start(&[24, 0xff, 0xff]));
        assert!(!Codec::H264.is_keyframe_start(&[28]));
    }

    #[test]
    fn h264_keyframes_in_single_stap_a_and_fu_a() {
        assert!(Codec::H264.is_keyframe_start(&[0x65, 0x88]));
        assert!(Codec::H264.is_keyframe_start(&[0x67, 0x42]));
        assert!(!Codec::H264.is_keyframe_start(&[0x41, 0x9a]));
        // STAP-A holding an SPS.
        assert!(Codec::H264.is_keyframe_start(&[0x78, 0x00, 0x02, 0x67, 0x42]));
        // FU-A start of an IDR, and its continuation.
        assert!(Codec::H264.is_keyframe_start(&[0x7c, 0x85, 0x00]));
        assert!(!Codec::H264.is_keyframe_start(&[0x7c, 0x05, 0x00]));
    }

    #[test]
    fn mime_types_map_case_insensitively() {
        assert_eq!(Codec::from_mime("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_mime("audio/opus"), Codec::Opus);
        assert_eq!(Codec::from_mime("video/h264"), Codec::H264);
        assert_eq!(Codec::from_mime("video/x-unknown"), Codec::Other);
    }

    #[test]
    fn vp8_keyframes_declare_their_size() {
        // Extended descriptor with a 15-bit picture id, then a keyframe header for 640x360.
        let key = [
            0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
        ];
        assert_eq!(vp8_keyframe_size(&key), Some((640, 360)));
        assert_eq!(vp8_keyframe_size(&key[..12]), None, "truncated");
        let mut delta = key;
        delta[4] |= 0x01;
        assert_eq!(
            vp8_keyframe_size(&delta),
            None,
            "interframes declare nothing"
        );
        let mut garbled = key;
        garbled[7] = 0;
        assert_eq!(vp8_keyframe_size(&garbled), None);
    }
}
