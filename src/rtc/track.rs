//! [`ForwardedTrack`]: the outgoing track that carries one published track to one subscriber.
//!
//! webrtc-rs's `TrackLocalStaticRTP` is built to fan one track out to many peer connections:
//! every write takes an async lock, copies its list of bindings and clones the packet. A
//! subscriber's copy of a track has exactly one binding (one sender on one peer connection), so
//! this track keeps that binding behind a plain read lock and builds the outgoing packet once,
//! with the subscriber's SSRC and payload type, straight into the sender's SRTP writer (see
//! `egress.rs` for why it skips the interceptors).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use webrtc::rtp;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::track::track_local::{TrackLocal, TrackLocalContext};

use super::egress::{OutgoingStream, OutgoingStreams};
use crate::forward::RtpPacket;

/// The negotiated sender this track writes to.
struct Binding {
    context_id: String,
    ssrc: u32,
    payload_type: u8,
    /// Whether the sender is paused (webrtc-rs keeps the flag in its own atomic type).
    paused: Box<dyn Fn() -> bool + Send + Sync>,
    /// The sender's SRTP writer, found by SSRC once webrtc-rs has bound the stream (which it
    /// does just after binding the track).
    stream: OnceLock<Arc<OutgoingStream>>,
    /// The MID header extension, when the subscriber negotiated it.
    mid: Option<rtp::header::Extension>,
}

pub struct ForwardedTrack {
    /// Unique in this process: names the outgoing stream across the tracks it carries when
    /// its transceiver is recycled.
    stream_key: u64,
    id: String,
    stream_id: String,
    codec: RTCRtpCodecCapability,
    binding: RwLock<Option<Arc<Binding>>>,
    /// The connection's outgoing streams, where the binding's SRTP writer is found.
    streams: Arc<OutgoingStreams>,
}

impl ForwardedTrack {
    pub fn new(
        codec: RTCRtpCodecCapability,
        id: String,
        stream_id: String,
        streams: Arc<OutgoingStreams>,
    ) -> Self {
        static NEXT_STREAM_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            stream_key: NEXT_STREAM_KEY.fetch_add(1, Ordering::Relaxed),
            id,
            stream_id,
            codec,
            binding: RwLock::new(None),
            streams,
        }
    }

    pub fn stream_key(&self) -> u64 {
        self.stream_key
    }

    /// Writes one packet at `now`; returns the bytes written, 0 when the track is not bound
    /// (before negotiation, after removal) or the write failed.
    pub async fn write(&self, packet: &RtpPacket, now: Instant) -> usize {
        let Some(b) = self
            .binding
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
        else {
            return 0;
        };
        if (b.paused)() {
            return 0;
        }
        let stream = match b.stream.get() {
            Some(stream) => stream,
            None => match self.streams.get(b.ssrc) {
                Some(found) => b.stream.get_or_init(|| found),
                None => return 0,
            },
        };
        let mut rtp = rtp::packet::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: packet.marker,
                payload_type: b.payload_type,
                sequence_number: packet.sequence_number,
                timestamp: packet.timestamp,
                ssrc: b.ssrc,
                ..Default::default()
            },
            payload: packet.payload.clone(),
        };
        if let Some(mid) = &b.mid {
            // Only fails for ids outside 1..=14 or payloads over 16 bytes, which bind rejects.
            let _ = rtp.header.set_extension(mid.id, mid.payload.clone());
        }
        stream.write(&rtp, now).await
    }
}

/// `a=fmtp` parameters as a map with lower-case keys.
fn fmtp_parameters(line: &str) -> HashMap<String, String> {
    line.split(';')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
        })
        .collect()
}

/// Whether a negotiated codec is exactly ours: same format parameters, or for H.264 the same
/// packetization mode and profile (the level may differ: a decoder handles lower levels).
fn same_format(mime_type: &str, ours: &str, theirs: &str) -> bool {
    let (ours, theirs) = (fmtp_parameters(ours), fmtp_parameters(theirs));
    if mime_type.eq_ignore_ascii_case("video/h264") {
        let mode = |p: &HashMap<String, String>| {
            p.get("packetization-mode")
                .cloned()
                .unwrap_or_else(|| "0".into())
        };
        let profile = |p: &HashMap<String, String>| {
            p.get("profile-level-id")
                .map(|v| v.chars().take(4).collect::<String>())
        };
        mode(&ours) == mode(&theirs) && profile(&ours) == profile(&theirs)
    } else {
        ours == theirs
    }
}

#[async_trait::async_trait]
impl TrackLocal for ForwardedTrack {
    async fn bind(&self, t: &TrackLocalContext) -> webrtc::error::Result<RTCRtpCodecParameters> {
        let same_mime = |c: &&RTCRtpCodecParameters| {
            c.capability
                .mime_type
                .eq_ignore_ascii_case(&self.codec.mime_type)
        };
        let codecs = t.codec_parameters();
        let chosen = codecs
            .iter()
            .filter(same_mime)
            .find(|c| {
                same_format(
                    &self.codec.mime_type,
                    &self.codec.sdp_fmtp_line,
                    &c.capability.sdp_fmtp_line,
                )
            })
            .or_else(|| codecs.iter().find(same_mime))
            .ok_or(webrtc::Error::ErrUnsupportedCodec)?;
        let mid = t
            .header_extensions()
            .iter()
            .find(|e| e.uri == webrtc::sdp::extmap::SDES_MID_URI)
            .and_then(|e| {
                let mid = t.mid()?;
                let id = u8::try_from(e.id).ok().filter(|id| (1..=14).contains(id))?;
                (mid.len() <= 16).then(|| rtp::header::Extension {
                    id,
                    payload: bytes::Bytes::copy_from_slice(mid.as_bytes()),
                })
            });
        *self
            .binding
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(Binding {
            context_id: t.id(),
            ssrc: t.ssrc(),
            payload_type: chosen.payload_type,
            paused: {
                let flag = t.paused();
                Box::new(move || flag.load(Ordering::Relaxed))
            },
            stream: OnceLock::new(),
            mid,
        }));
        Ok(chosen.clone())
    }

    async fn unbind(&self, t: &TrackLocalContext) -> webrtc::error::Result<()> {
        let mut binding = self
            .binding
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*binding {
            Some(b) if b.context_id == t.id() => {
                *binding = None;
                Ok(())
            }
            _ => Err(webrtc::Error::ErrUnbindFailed),
        }
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn rid(&self) -> Option<&str> {
        None
    }

    fn stream_id(&self) -> &str {
        &self.stream_id
    }

    fn kind(&self) -> RTPCodecType {
        if self.codec.mime_type.starts_with("audio/") {
            RTPCodecType::Audio
        } else if self.codec.mime_type.starts_with("video/") {
            RTPCodecType::Video
        } else {
            RTPCodecType::Unspecified
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::same_format;

    #[test]
    fn h264_matches_on_packetization_mode_and_profile_not_level() {
        let ours = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
        assert!(same_format(
            "video/H264",
            ours,
            "profile-level-id=42e034;packetization-mode=1"
        ));
        assert!(!same_format(
            "video/H264",
            ours,
            "profile-level-id=42e01f;packetization-mode=0"
        ));
        assert!(!same_format(
            "video/H264",
            ours,
            "profile-level-id=640c1f;packetization-mode=1"
        ));
    }

    #[test]
    fn other_codecs_match_on_all_parameters() {
        assert!(same_format(
            "audio/opus",
            "minptime=10;useinbandfec=1",
            "useinbandfec=1; minptime=10"
        ));
        assert!(!same_format("video/VP9", "profile-id=0", "profile-id=2"));
        assert!(same_format("video/VP8", "", ""));
    }
}
