//! Datagram admission: what may pass from the shared media socket into webrtc-rs.
//!
//! Anyone can send anything to Plaza's UDP port, from any source address, and webrtc-rs 0.17
//! parses part of every SRTP and SRTCP packet *before* authenticating it. Some of that parsing
//! panics on short or inconsistent input (an RTP header-extension element longer than the
//! packet: `advance out of bounds` in `rtp::header::Header::unmarshal`; an SRTCP packet shorter
//! than its fixed header: an index out of bounds in `decrypt_rtcp`), and a panic there ends the
//! connection's SRTP read loop for good: its participant silently stops publishing. So every
//! datagram is checked here first, with the same reads the stack will make, and one that would
//! make any of them overrun is dropped and counted. Well-formed but forged packets still pass:
//! SRTP authentication rejects those (see `stack_drops.rs` for how they are counted).
//!
//! The check is a handful of byte reads per packet and allocates nothing: it runs on every
//! datagram the server receives.

/// Why a datagram was refused before reaching the stack (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Empty, or a first byte outside the ranges RFC 7983 gives STUN, DTLS and RTP/RTCP.
    NotWebrtc,
    /// RTP whose header (CSRCs, extension, extension elements) runs past the datagram's end.
    MalformedRtp,
    /// RTCP shorter than the smallest SRTCP packet.
    MalformedRtcp,
}

impl Rejection {
    pub const ALL: [Rejection; 3] = [
        Rejection::NotWebrtc,
        Rejection::MalformedRtp,
        Rejection::MalformedRtcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NotWebrtc => "not_webrtc",
            Rejection::MalformedRtp => "malformed_rtp",
            Rejection::MalformedRtcp => "malformed_rtcp",
        }
    }
}

/// The fixed RTP header, before CSRCs.
const RTP_HEADER_BYTES: usize = 12;
/// RFC 8285 header-extension profiles, as webrtc-rs's parser matches them.
const ONE_BYTE_PROFILE: u16 = 0xBEDE;
const TWO_BYTE_PROFILE: u16 = 0x1000;
/// A one-byte element with this id ends the extension (RFC 8285 4.2).
const ONE_BYTE_RESERVED_ID: u8 = 0x0F;
/// The smallest SRTCP packet: header and sender SSRC (8), E flag and index (4), and the
/// shortest authentication tag of any profile (HMAC-SHA1-80: 10).
const MIN_SRTCP_BYTES: usize = 8 + 4 + 10;

/// Checks one received datagram. `Ok` means webrtc-rs can parse it without reading past its end
/// (it may still reject it, which is harmless).
pub fn admit(datagram: &[u8]) -> Result<(), Rejection> {
    match datagram.first() {
        // RFC 7983: STUN 0-3, DTLS 20-63, RTP/RTCP 128-191.
        Some(0..=3) | Some(20..=63) => Ok(()),
        Some(128..=191) => {
            // RFC 5761 4: payload types 64-95 (with the marker bit: 192-223) are RTCP.
            if matches!(datagram.get(1).map(|b| b & 0x7f), Some(64..=95)) {
                check_rtcp(datagram)
            } else {
                check_rtp(datagram)
            }
        }
        _ => Err(Rejection::NotWebrtc),
    }
}

fn check_rtcp(datagram: &[u8]) -> Result<(), Rejection> {
    // The first byte (128-191) already says version 2.
    if datagram.len() < MIN_SRTCP_BYTES {
        return Err(Rejection::MalformedRtcp);
    }
    Ok(())
}

/// Walks the RTP header exactly as `rtp::header::Header::unmarshal` 0.17 does, including its
/// habit of reading extension elements past the extension's declared end (into the payload),
/// and fails where that walk would read past the datagram.
fn check_rtp(datagram: &[u8]) -> Result<(), Rejection> {
    let len = datagram.len();
    if len < RTP_HEADER_BYTES {
        return Err(Rejection::MalformedRtp);
    }
    let csrc_count = (datagram[0] & 0x0f) as usize;
    let mut at = RTP_HEADER_BYTES + 4 * csrc_count;
    if len < at {
        return Err(Rejection::MalformedRtp);
    }
    let has_extension = datagram[0] & 0x10 != 0;
    if !has_extension {
        return Ok(());
    }
    let Some(ext) = datagram.get(at..at + 4) else {
        return Err(Rejection::MalformedRtp);
    };
    let profile = u16::from_be_bytes([ext[0], ext[1]]);
    let ext_len = u16::from_be_bytes([ext[2], ext[3]]) as usize * 4;
    at += 4;
    let end = at + ext_len;
    if len < end {
        return Err(Rejection::MalformedRtp);
    }
    // Every read below is one the parser makes unchecked: `byte` is its `get_u8`.
    let byte = |i: usize| datagram.get(i).copied().ok_or(Rejection::MalformedRtp);
    match profile {
        ONE_BYTE_PROFILE => {
            while at < end {
                let b = byte(at)?;
                at += 1;
                if b == 0 {
                    continue; // padding
                }
                if b >> 4 == ONE_BYTE_RESERVED_ID {
                    break;
                }
                at += (b & 0x0f) as usize + 1;
                if at > len {
                    return Err(Rejection::MalformedRtp);
                }
            }
        }
        TWO_BYTE_PROFILE => {
            while at < end {
                let b = byte(at)?;
                at += 1;
                if b == 0 {
                    continue; // padding
                }
                at += byte(at)? as usize + 1;
                if at > len {
                    return Err(Rejection::MalformedRtp);
                }
            }
        }
        // Any other profile is one opaque block, already known to fit.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::util::marshal::Unmarshal;

    /// An RTP header with the extension `ext` (profile, then element bytes, padded to words).
    fn rtp_with_extension(profile: u16, elements: &[u8], payload: &[u8]) -> Vec<u8> {
        let words = elements.len().div_ceil(4);
        let mut p = vec![0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend_from_slice(&profile.to_be_bytes());
        p.extend_from_slice(&(words as u16).to_be_bytes());
        p.extend_from_slice(elements);
        p.resize(p.len() + words * 4 - elements.len(), 0);
        p.extend_from_slice(payload);
        p
    }

    /// What the stack does with the bytes: `Err` for a clean rejection, a panic as a panic.
    fn stack_parses(datagram: &[u8]) -> std::thread::Result<bool> {
        let bytes = datagram.to_vec();
        std::panic::catch_unwind(move || {
            webrtc::rtp::header::Header::unmarshal(&mut &bytes[..]).is_ok()
        })
    }

    #[test]
    fn every_reason_is_listed_in_declaration_order() {
        // The socket indexes its counters by `reason as usize`.
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn the_forged_packet_of_issue_11_is_refused_and_would_panic_the_stack() {
        // Two-byte profile, one word of extension: element id 1 claiming 200 bytes.
        let forged = rtp_with_extension(TWO_BYTE_PROFILE, &[0x01, 0xc8], &[]);
        assert_eq!(admit(&forged), Err(Rejection::MalformedRtp));
        assert!(
            stack_parses(&forged).is_err(),
            "webrtc-rs 0.17 still panics on it: the guard is what keeps it out"
        );
    }

    #[test]
    fn one_byte_elements_may_run_into_the_payload_but_not_past_the_end() {
        // Element id 1, 16 bytes, in a one-word extension: the parser reads into the payload.
        let into_payload = rtp_with_extension(ONE_BYTE_PROFILE, &[0x1f], &[0u8; 20]);
        assert_eq!(admit(&into_payload), Ok(()));
        assert!(matches!(stack_parses(&into_payload), Ok(true)));
        let past_end = rtp_with_extension(ONE_BYTE_PROFILE, &[0x1f], &[0u8; 4]);
        assert_eq!(admit(&past_end), Err(Rejection::MalformedRtp));
        assert!(stack_parses(&past_end).is_err(), "panics in the stack");
    }

    #[test]
    fn well_formed_rtp_passes() {
        // What browsers send: one-byte extensions (mid, abs-send-time), then the payload.
        let rtp = rtp_with_extension(ONE_BYTE_PROFILE, &[0x10, b'0', 0x32, 1, 2, 3], &[0xab; 900]);
        assert_eq!(admit(&rtp), Ok(()));
        assert_eq!(
            admit(&[0x80, 0x6f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 9]),
            Ok(())
        );
        let two_byte = rtp_with_extension(TWO_BYTE_PROFILE, &[0x01, 0x02, 7, 7], &[1; 10]);
        assert_eq!(admit(&two_byte), Ok(()));
    }

    #[test]
    fn short_headers_are_refused() {
        assert_eq!(admit(&[0x80, 0x60, 0, 1]), Err(Rejection::MalformedRtp));
        // Four CSRCs announced, none present.
        assert_eq!(
            admit(&[0x84, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2]),
            Err(Rejection::MalformedRtp)
        );
        // An extension header that does not fit, or a length past the end.
        assert_eq!(
            admit(&[0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0xbe]),
            Err(Rejection::MalformedRtp)
        );
        let long = rtp_with_extension(0x1234, &[1, 2, 3, 4], &[]);
        assert_eq!(admit(&long), Ok(()));
        assert_eq!(admit(&long[..long.len() - 1]), Err(Rejection::MalformedRtp));
    }

    #[test]
    fn rtcp_needs_room_for_its_srtcp_trailer() {
        let mut rtcp = vec![0x80, 200, 0, 6];
        rtcp.resize(MIN_SRTCP_BYTES, 0);
        assert_eq!(admit(&rtcp), Ok(()));
        assert_eq!(admit(&rtcp[..4]), Err(Rejection::MalformedRtcp));
        rtcp[0] = 0x40; // version 1 is outside 128-191 anyway
        assert_eq!(admit(&rtcp), Err(Rejection::NotWebrtc));
    }

    #[test]
    fn stun_and_dtls_pass_and_other_first_bytes_do_not() {
        assert_eq!(admit(&[0x00, 0x01, 0, 0]), Ok(()));
        assert_eq!(admit(&[22, 254, 253]), Ok(()));
        for first in [4u8, 19, 64, 127, 192, 255] {
            assert_eq!(admit(&[first, 0, 0, 0]), Err(Rejection::NotWebrtc));
        }
        assert_eq!(admit(&[]), Err(Rejection::NotWebrtc));
    }
}
