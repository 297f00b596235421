//! Measurements taken inside webrtc-rs: an interceptor that counts the RTCP feedback the stack
//! sends on its own (NACKs to publishers), and the statistics in subscribers' receiver reports.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use prometheus::IntCounter;
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};
use webrtc::rtcp::reception_report::ReceptionReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

use crate::metrics::Metrics;

/// Builds a [`FeedbackCounter`] for each peer connection. Registered before the NACK generator
/// so the generator's writes pass through it.
pub struct FeedbackCounterBuilder {
    pub nacks_sent: IntCounter,
}

impl InterceptorBuilder for FeedbackCounterBuilder {
    fn build(
        &self,
        _id: &str,
    ) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(FeedbackCounter {
            nacks_sent: self.nacks_sent.clone(),
        }))
    }
}

struct FeedbackCounter {
    nacks_sent: IntCounter,
}

struct CountingWriter {
    inner: Arc<dyn RTCPWriter + Send + Sync>,
    nacks_sent: IntCounter,
}

#[async_trait]
impl RTCPWriter for CountingWriter {
    async fn write(
        &self,
        pkts: &[Box<dyn webrtc::rtcp::packet::Packet + Send + Sync>],
        attributes: &Attributes,
    ) -> Result<usize, webrtc::interceptor::Error> {
        for p in pkts {
            if p.as_any().is::<TransportLayerNack>() {
                self.nacks_sent.inc();
            }
        }
        self.inner.write(pkts, attributes).await
    }
}

#[async_trait]
impl Interceptor for FeedbackCounter {
    async fn bind_rtcp_reader(
        &self,
        reader: Arc<dyn RTCPReader + Send + Sync>,
    ) -> Arc<dyn RTCPReader + Send + Sync> {
        reader
    }

    async fn bind_rtcp_writer(
        &self,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
    ) -> Arc<dyn RTCPWriter + Send + Sync> {
        Arc::new(CountingWriter {
            inner: writer,
            nacks_sent: self.nacks_sent.clone(),
        })
    }

    async fn bind_local_stream(
        &self,
        _info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        writer
    }

    async fn unbind_local_stream(&self, _info: &StreamInfo) {}

    async fn bind_remote_stream(
        &self,
        _info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        Ok(())
    }
}

/// Records one reception report a subscriber sent about one of our outgoing streams.
pub fn observe_reception_report(metrics: &Metrics, report: &ReceptionReport, clock_rate: u32) {
    metrics
        .fraction_lost
        .observe(report.fraction_lost as f64 / 256.0);
    if clock_rate > 0 {
        metrics
            .jitter
            .observe(report.jitter as f64 / clock_rate as f64);
    }
    if let Some(rtt) = round_trip_seconds(report.last_sender_report, report.delay, ntp_middle_now())
    {
        metrics.rtt.observe(rtt);
    }
}

/// RFC 3550 6.4.1: RTT = arrival − LSR − DLSR, all in the middle 32 bits of NTP time.
fn round_trip_seconds(lsr: u32, dlsr: u32, now: u32) -> Option<f64> {
    if lsr == 0 {
        return None; // no sender report received yet
    }
    let rtt = now.wrapping_sub(lsr).wrapping_sub(dlsr);
    (rtt < 0x8000_0000).then(|| rtt as f64 / 65536.0)
}

/// The middle 32 bits of the current NTP time, the unit of LSR and DLSR.
fn ntp_middle_now() -> u32 {
    (super::egress::ntp_time(SystemTime::now()) >> 16) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_from_lsr_and_dlsr() {
        // Sent at 10.0 s, held 0.25 s by the receiver, report back at 10.5 s: RTT 0.25 s.
        let at = |s: f64| (s * 65536.0) as u32;
        let rtt = round_trip_seconds(at(10.0), at(0.25), at(10.5)).unwrap();
        assert!((rtt - 0.25).abs() < 1e-3, "{rtt}");
        assert_eq!(round_trip_seconds(0, 5, 10), None);
        // A report that seems to come from the future is ignored, not a huge RTT.
        assert_eq!(round_trip_seconds(at(10.0), at(1.0), at(10.5)), None);
    }
}
