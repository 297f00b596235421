//! Our RTP packet: the header fields the forwarding core reads and rewrites, and a shared payload.
//!
//! Deliberately not webrtc-rs's type: the core must not depend on the WebRTC stack, and the
//! payload is a `Bytes` shared by every subscriber's copy (fan-out never copies media).
//! Header extensions are not carried: their ids are negotiated per connection and the ones a
//! publisher sends (transport-wide sequence numbers, abs-send-time, mid) describe its own
//! connection, so ingest strips them and each subscriber's connection adds its own.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub marker: bool,
    pub payload: Bytes,
}

impl RtpPacket {
    /// Bytes on the wire for this packet without extensions or SRTP overhead, for accounting.
    pub fn wire_size(&self) -> usize {
        12 + self.payload.len()
    }
}
