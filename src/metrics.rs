//! Every Prometheus collector, registered once per server in its own registry (so several
//! servers in one test process never mix their numbers), carried in the app state.
//! Names start with `plaza_`; labels are bounded sets (kinds, reasons, codes), never ids.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// The roles of the tasks Plaza spawns, the `role` label of `plaza_tasks`.
pub const TASK_ROLES: &[&str] = &[
    "session",
    "room",
    "ingest",
    "ingest_rtcp",
    "egress",
    "egress_rtcp",
];

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
    pub keyframe_requests: IntCounterVec,
    pub nacks_received: IntCounterVec,
    pub retransmissions: IntCounterVec,
    pub signal_messages: IntCounterVec,
    pub signal_errors: IntCounterVec,
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
            registry,
        }
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
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
