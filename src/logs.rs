//! What reaches the log, and what is only counted.
//!
//! Anyone can make a server log: a stranger's datagrams and messages reach code that warns about
//! them, Plaza's and webrtc-rs's alike (STUN for a connection that is not listening yet wrote an
//! ERROR line per packet: 70 MB in under three minutes). So:
//! - every WARN and ERROR call site may write [`BURST`] lines per [`WINDOW`]; the rest are
//!   counted (`plaza_log_lines_suppressed_total`), and once per window one line says how many
//!   were left out;
//! - webrtc-rs's report of each SRTP or SRTCP packet it refused (failed authentication, replay)
//!   is not a log line at all but a count, `plaza_rejected_datagrams_total{reason="srtp_*"}`:
//!   those are the datagrams that passed [`crate::rtc`]'s own checks but were forged or stale.
//!
//! Events that arrive through `log` (webrtc-rs's) all share one tracing call site per level, so
//! a call site here is the original file and line, from the event's normalized metadata.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Filter, Layer};

/// Lines one call site may write per window.
pub const BURST: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(10);

/// Where webrtc-rs 0.17 reports each incoming SRTP/SRTCP packet it could not accept.
const SRTP_SESSION_TARGET: &str = "webrtc_srtp::session";

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
/// Per [`SrtpRejection`], in its declaration order.
static SRTP_REJECTED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Lines left out by the rate limit since the process started.
pub fn suppressed_lines() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// Why webrtc-rs refused an incoming SRTP or SRTCP packet (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpRejection {
    /// The authentication tag did not verify: not from the participant, or altered.
    Unauthenticated,
    /// A packet index seen before (a replay, or a duplicate on the network).
    Replayed,
    /// Anything else the SRTP layer refused (too short for its tag, ...).
    Invalid,
}

impl SrtpRejection {
    pub const ALL: [SrtpRejection; 3] = [
        SrtpRejection::Unauthenticated,
        SrtpRejection::Replayed,
        SrtpRejection::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SrtpRejection::Unauthenticated => "srtp_unauthenticated",
            SrtpRejection::Replayed => "srtp_replayed",
            SrtpRejection::Invalid => "srtp_invalid",
        }
    }

    /// Counted since the process started.
    pub fn count(self) -> u64 {
        SRTP_REJECTED[self as usize].load(Ordering::Relaxed)
    }

    /// Reads webrtc-srtp 0.17's error text (its `Display` is all the log record carries).
    fn classify(message: &str) -> SrtpRejection {
        if message.contains("auth tag") || message.contains("aes gcm") {
            SrtpRejection::Unauthenticated
        } else if message.contains("duplicated") {
            SrtpRejection::Replayed
        } else {
            SrtpRejection::Invalid
        }
    }
}

/// The rate limit on WARN and ERROR lines, as a per-layer filter for the output layer.
#[derive(Default)]
pub struct RateLimit {
    windows: Mutex<HashMap<CallSite, Window>>,
}

/// A source location. The set is bounded by the code, so the map is too.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CallSite {
    target: String,
    file: Option<String>,
    line: Option<u32>,
}

struct Window {
    started_at: Instant,
    written: u32,
}

impl RateLimit {
    /// Whether a line from `site` may be written at `now`.
    fn admit(&self, site: CallSite, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(site).or_insert(Window {
            started_at: now,
            written: 0,
        });
        if now.duration_since(w.started_at) >= WINDOW {
            *w = Window {
                started_at: now,
                written: 0,
            };
        }
        if w.written < BURST {
            w.written += 1;
            true
        } else {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

impl<S: Subscriber> Filter<S> for RateLimit {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if *meta.level() > Level::WARN {
            return true; // INFO and below: not rate-limited
        }
        let site = CallSite {
            target: meta.target().to_owned(),
            file: meta.file().map(str::to_owned),
            line: meta.line(),
        };
        self.admit(site, Instant::now())
    }
}

/// Counts webrtc-rs's refused SRTP/SRTCP packets; writes nothing.
pub struct SrtpRejections;

impl<S: Subscriber> Layer<S> for SrtpRejections {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if meta.target() != SRTP_SESSION_TARGET {
            return;
        }
        let mut message = MessageText(String::new());
        event.record(&mut message);
        let reason = SrtpRejection::classify(&message.0);
        SRTP_REJECTED[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// webrtc-rs logs routine events (a closing peer connection, a stray packet) as warnings; they
/// say nothing to an operator. Unless the filter mentions webrtc, only its errors are shown.
const QUIET_WEBRTC: &str = "webrtc=error,webrtc_ice=error,webrtc_dtls=error,webrtc_srtp=error,\
                            webrtc_mdns=error,webrtc_sctp=error,interceptor=error";

/// Installs the process's subscriber: lines filtered by `level` (an `EnvFilter` directive such
/// as `info` or `plaza=debug`) and rate-limited, as text or JSON, and the SRTP rejection count.
pub fn init(level: &str, json: bool) {
    use tracing_subscriber::filter::{FilterExt, Targets};
    use tracing_subscriber::prelude::*;
    let level = if level.contains("webrtc") {
        level.to_owned()
    } else {
        format!("{level},{QUIET_WEBRTC}")
    };
    let filter = tracing_subscriber::EnvFilter::new(level).and(RateLimit::default());
    let output = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };
    let srtp =
        SrtpRejections.with_filter(Targets::new().with_target(SRTP_SESSION_TARGET, Level::INFO));
    tracing_subscriber::registry()
        .with(output)
        .with(srtp)
        .init();
}

/// Writes one line per window saying how many lines the rate limit left out, until the process
/// ends. Spawn it once, next to the subscriber.
pub async fn report_suppressed() {
    let mut reported = 0;
    let mut tick = tokio::time::interval(WINDOW);
    loop {
        tick.tick().await;
        let now = suppressed_lines();
        if now > reported {
            // At INFO, so that this line is never itself suppressed.
            tracing::info!(
                suppressed = now - reported,
                "repeated warnings were left out of the log (plaza_log_lines_suppressed_total)"
            );
            reported = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(line: u32) -> CallSite {
        CallSite {
            target: "t".into(),
            file: Some("f.rs".into()),
            line: Some(line),
        }
    }

    #[test]
    fn each_call_site_writes_a_burst_per_window_and_the_rest_is_counted() {
        let limit = RateLimit::default();
        let t0 = Instant::now();
        let before = suppressed_lines();
        let written = (0..100).filter(|_| limit.admit(site(1), t0)).count();
        assert_eq!(written, BURST as usize);
        assert!(suppressed_lines() >= before + 95);
        assert!(
            limit.admit(site(2), t0),
            "another call site has its own budget"
        );
        assert!(
            limit.admit(site(1), t0 + WINDOW),
            "a new window, a new burst"
        );
    }

    #[test]
    fn srtp_errors_are_classified_by_their_text() {
        use SrtpRejection::*;
        assert_eq!(
            SrtpRejection::classify("failed to verify auth tag"),
            Unauthenticated
        );
        assert_eq!(
            SrtpRejection::classify("aes gcm: aead::Error"),
            Unauthenticated
        );
        assert_eq!(
            SrtpRejection::classify("srtp ssrc=1 index=2: duplicated"),
            Replayed
        );
        assert_eq!(
            SrtpRejection::classify("packet is too short to be RTP packet"),
            Invalid
        );
        for (i, r) in SrtpRejection::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
