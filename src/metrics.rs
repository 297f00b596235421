//! Every Prometheus collector, registered once per server in its own registry (so several
//! servers in one test process never mix their numbers), carried in the app state.
//! Names start with `plaza_`; labels are bounded sets (kinds, reasons, codes), never ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The roles of the tasks Plaza spawns, the `role` label of `plaza_tasks`.
pub const TASK_ROLES: &[&str] = &["session", "room", "ingest", "ingest_rtcp", "egress_rtcp"];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub rooms: IntGauge,
    pub participants: IntGauge,
    pub published_tracks: IntGauge,
    pub subscriptions: IntGauge,
    pub peer_connections: IntGauge,
    pub tasks: IntGaugeVec,
    pub rtp_packets: IntCounterVec,
    pub rtp_bytes: IntCounterVec,
    pub dropped_packets: IntCounterVec,
    pub rejected_datagrams: IntCounterVec,
    pub keyframe_requests: IntCounterVec,
    pub nacks_received: IntCounterVec,
    pub nacks_sent: IntCounterVec,
    pub retransmissions: IntCounterVec,
    pub peer_connection_states: IntGaugeVec,
    pub media_worker_load: IntGaugeVec,
    pub rtt: Histogram,
    pub jitter: Histogram,
    pub fraction_lost: Histogram,
    pub join_to_first_media: Histogram,
    pub forward_delay: Histogram,
    pub udp_receive_buffer_errors: IntCounter,
    pub log_lines_suppressed: IntCounter,
    pub signal_messages: IntCounterVec,
    pub signal_errors: IntCounterVec,
    pub slow_client_disconnects: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("static metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let peer_connection_states = IntGaugeVec::new(
            Opts::new(
                "plaza_peer_connection_states",
                "Peer connections by ICE/DTLS connection state.",
            ),
            &["state"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(peer_connection_states.clone()))
            .expect("registered once");
        let udp_receive_buffer_errors = IntCounter::new(
            "plaza_udp_receive_buffer_errors_total",
            "UDP datagrams the kernel dropped because a socket's receive buffer was full \
             (/proc/net/snmp Udp RcvbufErrors, for the whole network namespace).",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(udp_receive_buffer_errors.clone()))
            .expect("registered once");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("registered once");
        let media_worker_load = IntGaugeVec::new(
            Opts::new(
                "plaza_media_worker_load",
                "Rooms plus their participants on each media worker thread (media.workers): \
                 a new room goes to the least loaded.",
            ),
            &["worker"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(media_worker_load.clone()))
            .expect("registered once");
        let tasks = IntGaugeVec::new(
            Opts::new("plaza_tasks", "Live background tasks by role."),
            &["role"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(tasks.clone()))
            .expect("registered once");
        Metrics {
            rooms: gauge("plaza_rooms", "Rooms that exist now."),
            participants: gauge("plaza_participants", "Participants joined now."),
            published_tracks: gauge("plaza_published_tracks", "Tracks being published now."),
            subscriptions: gauge(
                "plaza_subscriptions",
                "Subscriptions (one subscriber's copy of one track) now.",
            ),
            peer_connections: gauge("plaza_peer_connections", "Peer connections open now."),
            tasks,
            media_worker_load,
            rtp_packets: counter(
                "plaza_rtp_packets_total",
                "RTP packets received from publishers (in) and sent to subscribers (out).",
                &["direction", "kind"],
            ),
            rtp_bytes: counter(
                "plaza_rtp_bytes_total",
                "RTP bytes (header and payload) received and sent.",
                &["direction", "kind"],
            ),
            dropped_packets: counter(
                "plaza_dropped_packets_total",
                "RTP packets not forwarded to a subscriber, by reason.",
                &["reason"],
            ),
            rejected_datagrams: {
                let c = counter(
                    "plaza_rejected_datagrams_total",
                    "Datagrams on the media port dropped before the WebRTC stack, by reason.",
                    &["reason"],
                );
                // Every reason exists from the start, so the first one after a restart shows.
                for r in crate::rtc::DatagramRejection::ALL {
                    c.with_label_values(&[r.as_str()]);
                }
                for r in crate::logs::SrtpRejection::ALL {
                    c.with_label_values(&[r.as_str()]);
                }
                c
            },
            keyframe_requests: counter(
                "plaza_keyframe_requests_total",
                "Keyframe requests received from subscribers and sent to publishers, by type.",
                &["direction", "type"],
            ),
            nacks_received: counter(
                "plaza_nacks_received_total",
                "NACK feedback messages received, by leg.",
                &["leg"],
            ),
            nacks_sent: counter(
                "plaza_nacks_sent_total",
                "NACK feedback messages sent, by leg (to publishers).",
                &["leg"],
            ),
            peer_connection_states,
            rtt: histogram(
                "plaza_rtt_seconds",
                "Round-trip time to subscribers, from their RTCP receiver reports.",
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6],
            ),
            jitter: histogram(
                "plaza_jitter_seconds",
                "Interarrival jitter subscribers report (RTCP receiver reports).",
                vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2],
            ),
            fraction_lost: histogram(
                "plaza_fraction_lost",
                "Fraction of packets lost that subscribers report per RTCP interval (0 to 1).",
                vec![0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
            ),
            join_to_first_media: histogram(
                "plaza_join_to_first_media_seconds",
                "From a participant's join message to the first media packet sent to it.",
                vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0],
            ),
            forward_delay: histogram(
                "plaza_forward_delay_seconds",
                "From a published packet leaving webrtc-rs's receive path (decrypted) to its copies being sent to the subscribers.",
                vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
            ),
            udp_receive_buffer_errors,
            log_lines_suppressed: {
                let c = IntCounter::new(
                    "plaza_log_lines_suppressed_total",
                    "WARN and ERROR log lines left out by the per-call-site rate limit.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            retransmissions: counter(
                "plaza_retransmissions_total",
                "Packets subscribers asked for again (NACK): sent from history, or no longer there.",
                &["result"],
            ),
            signal_messages: counter(
                "plaza_signal_messages_total",
                "Signalling messages received, by type.",
                &["type"],
            ),
            signal_errors: counter(
                "plaza_signal_errors_total",
                "Signalling errors sent to clients, by code.",
                &["code"],
            ),
            slow_client_disconnects: counter(
                "plaza_slow_client_disconnects_total",
                "Signalling sessions ended because their client did not keep up with the messages \
                 sent to it, by what gave out: event_queue_full or write_timeout.",
                &["reason"],
            ),
            registry,
        }
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        if let Some(kernel) = read_udp_rcvbuf_errors() {
            catch_up(&self.udp_receive_buffer_errors, kernel);
        }
        catch_up(&self.log_lines_suppressed, crate::logs::suppressed_lines());
        for r in crate::logs::SrtpRejection::ALL {
            let counter = self.rejected_datagrams.with_label_values(&[r.as_str()]);
            catch_up(&counter, r.count());
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Live tasks of every role, summed: zero when the server is idle.
    pub fn live_tasks(&self) -> i64 {
        TASK_ROLES
            .iter()
            .map(|r| self.tasks.with_label_values(&[r]).get())
            .sum()
    }

    /// Counts a task as live until the returned guard drops.
    pub fn task(&self, role: &'static str) -> TaskGuard {
        debug_assert!(TASK_ROLES.contains(&role), "unlisted task role {role}");
        let gauge = self.tasks.with_label_values(&[role]);
        gauge.inc();
        TaskGuard(gauge)
    }
}

/// Raises `counter` to `total`, a count kept elsewhere since the process started.
fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// `Udp: ... RcvbufErrors` from /proc/net/snmp: a header line of names, then one of values.
fn read_udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp.next()?.split_whitespace();
    let values = udp.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements its task gauge when dropped, however the task ends.
pub struct TaskGuard(IntGauge);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
