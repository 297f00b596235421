//! Direct egress: each outgoing stream's SRTP writer, taken from below webrtc-rs's interceptor
//! chain, and the RTCP sender reports for those streams.
//!
//! A packet written the ordinary way (`TrackLocalWriter::write_rtp`) passes an async lock and
//! webrtc-rs's statistics recorder, which hands every packet to a per-connection task over a
//! channel, then the sender-report interceptor's own async lock, before it reaches SRTP: at 8×8
//! that was about 12 % of the server's CPU, plus the statistics task's own work and wake-ups;
//! going around them cut the CPU per forwarded packet by about a quarter (docs/BENCHMARKS.md). None of those layers does anything for a forwarded packet that Plaza
//! needs except the sender reports, which browsers need for lip sync and round-trip times.
//!
//! So [`DirectEgress`] is registered first in each connection's interceptor registry, where
//! `bind_local_stream` hands it the sender's SRTP writer itself. It keeps that writer per SSRC
//! in [`OutgoingStreams`], where the outgoing track finds it, and sends the sender reports of
//! those streams from what was written through [`OutgoingStream::write`]. Everything the
//! interceptors do for incoming streams (NACKs to publishers, receiver reports, congestion
//! feedback) is untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};
use webrtc::rtcp::sender_report::SenderReport;
use webrtc::rtp;

/// How often each outgoing stream's sender report goes out: webrtc-rs's own interval, and
/// well within what receivers expect (RFC 3550 suggests 5 s at most).
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Sender reports per RTCP write: 16 of 28 bytes each stay far below any MTU.
const REPORTS_PER_WRITE: usize = 16;

/// One connection's outgoing streams by SSRC, as bound by webrtc-rs.
#[derive(Default)]
pub struct OutgoingStreams {
    streams: Mutex<HashMap<u32, Arc<OutgoingStream>>>,
}

impl OutgoingStreams {
    /// The stream with this SSRC, once webrtc-rs has bound it (after the track's own bind).
    pub fn get(&self, ssrc: u32) -> Option<Arc<OutgoingStream>> {
        self.lock().get(&ssrc).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<OutgoingStream>>> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One outgoing stream: its SRTP writer and what its sender reports say.
pub struct OutgoingStream {
    ssrc: u32,
    clock_rate: u32,
    srtp: Arc<dyn RTPWriter + Send + Sync>,
    sent: Mutex<Sent>,
}

/// What was sent on a stream, for its sender reports.
#[derive(Default)]
struct Sent {
    packets: u32,
    payload_octets: u32,
    /// The last packet's RTP timestamp and when it was sent.
    last: Option<(u32, Instant)>,
}

impl OutgoingStream {
    /// Encrypts and sends one packet; returns the bytes written, 0 if SRTP is not up yet or
    /// the connection is gone. `now` is when the packet is sent, for the sender reports.
    pub async fn write(&self, packet: &rtp::packet::Packet, now: Instant) -> usize {
        let written = self
            .srtp
            .write(packet, &Attributes::new())
            .await
            .unwrap_or(0);
        if written > 0 {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            sent.packets = sent.packets.wrapping_add(1);
            sent.payload_octets = sent
                .payload_octets
                .wrapping_add(packet.payload.len() as u32);
            sent.last = Some((packet.header.timestamp, now));
        }
        written
    }

    /// The report for this stream at `now` (wall clock `wall`), or none before its first packet.
    /// The RTP time is the last packet's timestamp advanced by the time since it was sent: the
    /// mapping a receiver uses to line this stream up with the same publisher's other tracks,
    /// which were forwarded along the same path.
    fn sender_report(&self, now: Instant, wall: SystemTime) -> Option<SenderReport> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let (timestamp, at) = sent.last?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc: self.ssrc,
            ntp_time: ntp_time(wall),
            rtp_time: timestamp.wrapping_add((elapsed * self.clock_rate as f64) as u32),
            packet_count: sent.packets,
            octet_count: sent.payload_octets,
            ..Default::default()
        })
    }
}

/// A wall-clock time as a 64-bit NTP timestamp (seconds since 1900, 32.32 fixed point).
pub fn ntp_time(wall: SystemTime) -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let since_unix = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let fraction = ((since_unix.subsec_nanos() as u64) << 32) / 1_000_000_000;
    ((since_unix.as_secs() + NTP_UNIX_OFFSET) << 32) | fraction
}

/// Registers a connection's [`DirectEgress`]; the connection keeps `streams`.
pub struct DirectEgressBuilder {
    pub streams: Arc<OutgoingStreams>,
}

impl InterceptorBuilder for DirectEgressBuilder {
    fn build(
        &self,
        _id: &str,
    ) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(DirectEgress {
            streams: self.streams.clone(),
            closed: Arc::new(tokio::sync::Notify::new()),
        }))
    }
}

struct DirectEgress {
    streams: Arc<OutgoingStreams>,
    /// Ends the sender-report task when the connection closes.
    closed: Arc<tokio::sync::Notify>,
}

impl DirectEgress {
    async fn send_reports(
        streams: Arc<OutgoingStreams>,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
        closed: Arc<tokio::sync::Notify>,
    ) {
        let mut ticker = tokio::time::interval(SENDER_REPORT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = closed.notified() => return,
            }
            let (now, wall) = (Instant::now(), SystemTime::now());
            let reports: Vec<Box<dyn webrtc::rtcp::packet::Packet + Send + Sync>> = streams
                .lock()
                .values()
                .filter_map(|s| s.sender_report(now, wall))
                .map(|r| Box::new(r) as Box<dyn webrtc::rtcp::packet::Packet + Send + Sync>)
                .collect();
            for chunk in reports.chunks(REPORTS_PER_WRITE) {
                if let Err(e) = writer.write(chunk, &Attributes::new()).await {
                    tracing::debug!(error = %e, "sending sender reports");
                }
            }
        }
    }
}

#[async_trait]
impl Interceptor for DirectEgress {
    async fn bind_rtcp_reader(
        &self,
        reader: Arc<dyn RTCPReader + Send + Sync>,
    ) -> Arc<dyn RTCPReader + Send + Sync> {
        reader
    }

    /// Called once per connection: starts its sender reports.
    async fn bind_rtcp_writer(
        &self,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
    ) -> Arc<dyn RTCPWriter + Send + Sync> {
        tokio::spawn(Self::send_reports(
            self.streams.clone(),
            writer.clone(),
            self.closed.clone(),
        ));
        writer
    }

    /// Being first in the chain, `writer` is the sender's SRTP writer itself.
    async fn bind_local_stream(
        &self,
        info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        let stream = Arc::new(OutgoingStream {
            ssrc: info.ssrc,
            clock_rate: info.clock_rate,
            srtp: writer.clone(),
            sent: Mutex::default(),
        });
        self.streams.lock().insert(info.ssrc, stream);
        writer
    }

    async fn unbind_local_stream(&self, info: &StreamInfo) {
        self.streams.lock().remove(&info.ssrc);
    }

    async fn bind_remote_stream(
        &self,
        _info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        // notify_one keeps the wake-up if the task is between two waits.
        self.closed.notify_one();
        self.streams.lock().clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SRTP writer stand-in that accepts everything.
    struct Accepting;

    #[async_trait]
    impl RTPWriter for Accepting {
        async fn write(
            &self,
            pkt: &rtp::packet::Packet,
            _: &Attributes,
        ) -> Result<usize, webrtc::interceptor::Error> {
            Ok(12 + pkt.payload.len())
        }
    }

    fn packet(timestamp: u32, payload: usize) -> rtp::packet::Packet {
        rtp::packet::Packet {
            header: rtp::header::Header {
                timestamp,
                ..Default::default()
            },
            payload: bytes::Bytes::from(vec![0u8; payload]),
        }
    }

    #[tokio::test]
    async fn sender_report_counts_what_was_sent_and_advances_rtp_time() {
        let stream = OutgoingStream {
            ssrc: 7,
            clock_rate: 90_000,
            srtp: Arc::new(Accepting),
            sent: Mutex::default(),
        };
        let t0 = Instant::now();
        let wall = SystemTime::now();
        assert!(
            stream.sender_report(t0, wall).is_none(),
            "no report before the first packet"
        );
        stream.write(&packet(1000, 100), t0).await;
        stream.write(&packet(4000, 50), t0).await;
        let report = stream
            .sender_report(t0 + Duration::from_millis(500), wall)
            .expect("a report once packets were sent");
        assert_eq!(report.ssrc, 7);
        assert_eq!(report.packet_count, 2);
        assert_eq!(report.octet_count, 150);
        assert_eq!(report.rtp_time, 4000 + 45_000, "half a second at 90 kHz");
        assert_eq!(report.ntp_time, ntp_time(wall));
    }

    #[test]
    fn ntp_time_counts_from_1900_in_32_32_fixed_point() {
        let wall = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(ntp_time(wall) >> 32, 2_208_988_801);
        assert_eq!(ntp_time(wall) & 0xffff_ffff, 1 << 31, "half a second");
    }
}
