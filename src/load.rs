//! The load tool's engine (`plaza-load`): P publishers and S subscribers join one room on a
//! running Plaza through the real protocol, each its own WebRTC peer; publishers send synthetic
//! media whose payloads carry a counter and their send time. It measures, over a window:
//! delivery per receiver (packets expected vs received), one-way latency, join time (connect
//! to first packet of each track), and, given the server's pid, its CPU and memory.
//!
//! Publishers are members of the call too, so the server forwards each publisher's tracks to
//! the other publishers as well as to the subscribers: at 8×8 that is 15 copies of every
//! published packet, not 8. Every copy is accounted (delivery, latency, and the divisor of the
//! server's CPU per forwarded packet); join time is the subscribers' alone, since publishers
//! join before there is anything to receive.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Client, ClientOptions};

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Signalling URL, e.g. ws://127.0.0.1:8080/ws.
    pub url: String,
    pub room: String,
    pub publishers: usize,
    pub subscribers: usize,
    /// How long to measure, after everyone receives everything.
    pub duration: Duration,
    pub video_bitrate: u32,
    pub video_fps: u32,
    pub audio: bool,
    /// Every publisher's periodic keyframe at the same moment (a worst case), instead of each
    /// publisher at its own point of the keyframe interval, as independent cameras are.
    pub aligned_keyframes: bool,
    /// The server's pid, to measure its CPU and memory.
    pub server_pid: Option<u32>,
    /// Fault injection to check the accounting: the first subscriber drops every Nth audio
    /// packet it receives (audio has no retransmission, so each is a real loss).
    pub drop_audio_every: u64,
    /// Print a line a second while measuring.
    pub live: bool,
}

/// What one participant received from the publishers (other than itself) in the window.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiverReport {
    pub name: String,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub delivery_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub publishers: usize,
    pub subscribers: usize,
    pub duration_seconds: f64,
    pub video_bitrate: u32,
    pub video_fps: u32,
    pub audio: bool,
    pub aligned_keyframes: bool,
    pub packets_expected: u64,
    pub packets_received: u64,
    /// Over every receiver: subscribers and publishers.
    pub delivery_percent: f64,
    pub per_subscriber: Vec<ReceiverReport>,
    /// What each publisher received from the other publishers.
    pub per_publisher: Vec<ReceiverReport>,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_p99: f64,
    pub join_ms_p50: f64,
    pub join_ms_p95: f64,
    /// Connect to the first packet of each video track alone: video waits for a keyframe.
    pub join_video_ms_p50: f64,
    pub join_video_ms_p95: f64,
    /// Copies received by every receiver in the window, per second: what the server forwarded.
    pub forwarded_packets_per_second: f64,
    pub server_cpu_percent: Option<f64>,
    pub server_cpu_us_per_forwarded_packet: Option<f64>,
    pub server_rss_mb_before: Option<f64>,
    pub server_rss_mb_after: Option<f64>,
    pub packets_dropped_deliberately: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the room was not fully connected after {0:?}: {1}")]
    Setup(Duration, String),
}

/// CPU seconds (user + system) and resident memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
struct ProcSample {
    cpu_seconds: f64,
    rss_bytes: u64,
    at: Instant,
}

fn sample_process(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks_per_second();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(ProcSample {
        cpu_seconds: (utime + stime) / ticks,
        rss_bytes: rss_kb * 1024,
        at: Instant::now(),
    })
}

/// USER_HZ: 100 on every Linux architecture Plaza targets (it is fixed by the kernel ABI).
fn clock_ticks_per_second() -> f64 {
    100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs one bounded load test and returns its report.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    let video_options = ClientOptions {
        audio: config.audio,
        video: true,
        video_fps: config.video_fps,
        video_bitrate: Some(config.video_bitrate),
        keyframe_every: 2 * config.video_fps as u64,
        ..ClientOptions::default()
    };
    let listen_only = ClientOptions {
        audio: false,
        video: false,
        ..ClientOptions::default()
    };
    let publishers = futures::future::join_all((0..config.publishers).map(|i| {
        let (url, room, mut o) = (
            config.url.clone(),
            config.room.clone(),
            video_options.clone(),
        );
        if !config.aligned_keyframes {
            o.keyframe_phase = i as u64 * o.keyframe_every / config.publishers as u64;
        }
        async move { Client::join(&url, &room, &format!("pub{i}"), o).await }
    }))
    .await;
    // Subscribers join a room whose media already flows through the server, as people joining
    // a call do: their join time is then the server's, not the publishers' own setup. A probe
    // that receives every track once and leaves proves it (a publisher that has sent is not
    // enough: the server publishes a track when its first packet has arrived and decrypted).
    let setup_limit = Duration::from_secs(60);
    let setup_started = Instant::now();
    let tracks_each = config.publishers * if config.audio { 2 } else { 1 };
    let probe = Client::join(&config.url, &config.room, "probe", listen_only.clone()).await;
    while probe.flowing_tracks(1) < tracks_each {
        if setup_started.elapsed() > setup_limit {
            return Err(LoadError::Setup(
                setup_limit,
                format!(
                    "the probe receives {} of the {tracks_each} published tracks",
                    probe.flowing_tracks(1)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probe.close().await;
    let subscribers = futures::future::join_all((0..config.subscribers).map(|i| {
        let (url, room, o) = (config.url.clone(), config.room.clone(), listen_only.clone());
        async move { Client::join(&url, &room, &format!("sub{i}"), o).await }
    }))
    .await;

    // Everyone receives every publisher's tracks: that is when the measuring window opens.
    loop {
        let ready = subscribers
            .iter()
            .all(|s| s.flowing_tracks(1) == tracks_each);
        if ready {
            break;
        }
        if setup_started.elapsed() > setup_limit {
            let counts: Vec<usize> = subscribers.iter().map(|s| s.flowing_tracks(1)).collect();
            return Err(LoadError::Setup(
                setup_limit,
                format!("tracks flowing per subscriber {counts:?}, want {tracks_each}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let set_fault = |every: u64| {
        if let Some(first) = subscribers.first() {
            first
                .net
                .drop_in_audio_every
                .store(every, std::sync::atomic::Ordering::SeqCst);
        }
    };
    set_fault(config.drop_audio_every);
    let sent_at_start: Vec<(u64, u64)> = publishers
        .iter()
        .map(|p| (p.sent_counter(false), p.sent_counter(true)))
        .collect();
    let proc_before = config.server_pid.and_then(sample_process);
    let started = Instant::now();
    let mut last_line = started;
    while started.elapsed() < config.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if config.live && last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            let received: u64 = subscribers
                .iter()
                .chain(&publishers)
                .map(|c| c.received_count())
                .sum();
            let cpu = match (proc_before, config.server_pid.and_then(sample_process)) {
                (Some(a), Some(b)) => format!(
                    ", server CPU {:.0}%",
                    (b.cpu_seconds - a.cpu_seconds) / b.at.duration_since(a.at).as_secs_f64()
                        * 100.0
                ),
                _ => String::new(),
            };
            println!(
                "t={:>4.1}s  packets received so far {received}{cpu}",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let proc_after = config.server_pid.and_then(sample_process);
    let window = started.elapsed();
    let sent_at_end: Vec<(u64, u64)> = publishers
        .iter()
        .map(|p| (p.sent_counter(false), p.sent_counter(true)))
        .collect();
    set_fault(0);
    for p in &publishers {
        p.stop_media();
    }
    // Drain: let what was sent in the window arrive (or be retransmitted) before counting,
    // until nothing has arrived for 300 ms (5 s at most).
    let drain_limit = Instant::now() + Duration::from_secs(5);
    let mut last_total = u64::MAX;
    loop {
        let total: u64 = subscribers
            .iter()
            .chain(&publishers)
            .map(|c| c.received_count())
            .sum();
        if total == last_total || Instant::now() > drain_limit {
            break;
        }
        last_total = total;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Which publisher is which participant, to find its tracks at the subscribers.
    let mut publisher_ids = Vec::new();
    for p in &publishers {
        publisher_ids.push(p.participant_id().await);
    }
    let sources = Sources {
        ids: &publisher_ids,
        clients: &publishers,
        kinds: if config.audio {
            &[true, false]
        } else {
            &[true]
        },
        sent_at_start: &sent_at_start,
        sent_at_end: &sent_at_end,
    };
    let mut tally = Tally::default();
    let per_subscriber: Vec<ReceiverReport> = subscribers
        .iter()
        .map(|s| tally.receiver(s, None, &sources))
        .collect();
    let per_publisher: Vec<ReceiverReport> = publishers
        .iter()
        .enumerate()
        .map(|(i, p)| tally.receiver(p, Some(i), &sources))
        .collect();
    let Tally {
        mut latencies,
        mut joins,
        mut video_joins,
        expected: total_expected,
        received: total_received,
    } = tally;
    latencies.sort_by(f64::total_cmp);
    joins.sort_by(f64::total_cmp);
    video_joins.sort_by(f64::total_cmp);
    let dropped = subscribers
        .first()
        .map(|s| s.net.dropped_in.load(std::sync::atomic::Ordering::SeqCst))
        .unwrap_or(0);
    let forwarded_per_second = total_received as f64 / window.as_secs_f64();
    let (cpu_percent, cpu_per_packet) = match (proc_before, proc_after) {
        (Some(a), Some(b)) => {
            let cpu = b.cpu_seconds - a.cpu_seconds;
            let wall = b.at.duration_since(a.at).as_secs_f64();
            (
                Some(cpu / wall * 100.0),
                Some(cpu * 1e6 / total_received.max(1) as f64),
            )
        }
        _ => (None, None),
    };
    let report = LoadReport {
        publishers: config.publishers,
        subscribers: config.subscribers,
        duration_seconds: window.as_secs_f64(),
        video_bitrate: config.video_bitrate,
        video_fps: config.video_fps,
        audio: config.audio,
        aligned_keyframes: config.aligned_keyframes,
        packets_expected: total_expected,
        packets_received: total_received,
        delivery_percent: 100.0 * total_received as f64 / total_expected.max(1) as f64,
        per_subscriber,
        per_publisher,
        latency_ms_p50: percentile(&latencies, 0.50),
        latency_ms_p95: percentile(&latencies, 0.95),
        latency_ms_p99: percentile(&latencies, 0.99),
        join_ms_p50: percentile(&joins, 0.50),
        join_ms_p95: percentile(&joins, 0.95),
        join_video_ms_p50: percentile(&video_joins, 0.50),
        join_video_ms_p95: percentile(&video_joins, 0.95),
        forwarded_packets_per_second: forwarded_per_second,
        server_cpu_percent: cpu_percent,
        server_cpu_us_per_forwarded_packet: cpu_per_packet,
        server_rss_mb_before: proc_before.map(|p| p.rss_bytes as f64 / 1e6),
        server_rss_mb_after: proc_after.map(|p| p.rss_bytes as f64 / 1e6),
        packets_dropped_deliberately: dropped,
    };
    for c in publishers.into_iter().chain(subscribers) {
        c.leave();
        c.close().await;
    }
    Ok(report)
}

impl LoadReport {
    /// A human-readable summary table.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| {
            v.map(|v| format!("{v:.1} {unit}"))
                .unwrap_or_else(|| "n/a".into())
        };
        let mut out = String::new();
        out.push_str(&format!(
            "plaza-load: {} publishers x {} subscribers, {:.0} s, video {} kbit/s @ {} fps{}\n",
            self.publishers,
            self.subscribers,
            self.duration_seconds,
            self.video_bitrate / 1000,
            self.video_fps,
            if self.audio {
                " + Opus-sized audio"
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "  delivery            {:.3} % ({} of {} packets)\n",
            self.delivery_percent, self.packets_received, self.packets_expected
        ));
        out.push_str(&format!(
            "  latency p50/95/99   {:.2} / {:.2} / {:.2} ms\n",
            self.latency_ms_p50, self.latency_ms_p95, self.latency_ms_p99
        ));
        out.push_str(&format!(
            "  join p50/95         {:.0} / {:.0} ms (connect to first packet of each track)\n",
            self.join_ms_p50, self.join_ms_p95
        ));
        out.push_str(&format!(
            "  video join p50/95   {:.0} / {:.0} ms (connect to first packet of each video track)\n",
            self.join_video_ms_p50, self.join_video_ms_p95
        ));
        out.push_str(&format!(
            "  forwarded           {:.0} packets/s\n",
            self.forwarded_packets_per_second
        ));
        out.push_str(&format!(
            "  server CPU          {} ({} per forwarded packet)\n",
            opt(self.server_cpu_percent, "%"),
            opt(self.server_cpu_us_per_forwarded_packet, "us")
        ));
        out.push_str(&format!(
            "  server RSS          {} before, {} after\n",
            opt(self.server_rss_mb_before, "MB"),
            opt(self.server_rss_mb_after, "MB")
        ));
        out.push_str("  receiver     expected   received   lost   delivery\n");
        for s in self.per_subscriber.iter().chain(&self.per_publisher) {
            out.push_str(&format!(
                "  {:<10} {:>9} {:>10} {:>6}   {:.3} %\n",
                s.name, s.expected, s.received, s.lost, s.delivery_percent
            ));
        }
        out
    }
}

/// The publishers, and what each sent within the window.
struct Sources<'a> {
    /// Participant ids, by publisher index.
    ids: &'a [String],
    clients: &'a [Client],
    /// The kinds each publisher sends (true: video).
    kinds: &'a [bool],
    /// Per publisher: its (audio, video) counters when the window opened and closed.
    sent_at_start: &'a [(u64, u64)],
    sent_at_end: &'a [(u64, u64)],
}

impl Sources<'_> {
    /// The counters publisher `pi` sent within the window, for one kind.
    fn window(&self, pi: usize, video: bool) -> std::ops::Range<u64> {
        let pick = |c: &(u64, u64)| if video { c.1 } else { c.0 };
        pick(&self.sent_at_start[pi])..pick(&self.sent_at_end[pi])
    }
}

/// Accumulates every receiver's counts, latencies and join times.
#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    joins: Vec<f64>,
    video_joins: Vec<f64>,
    expected: u64,
    received: u64,
}

impl Tally {
    /// Accounts what `receiver` got of every track of every publisher other than itself
    /// (`own`: its publisher index, if it is one), within that publisher's window. A track that
    /// never arrived counts as wholly lost. Join times are the subscribers' alone.
    fn receiver(
        &mut self,
        receiver: &Client,
        own: Option<usize>,
        sources: &Sources,
    ) -> ReceiverReport {
        let got = receiver.received();
        let (mut expected, mut received) = (0u64, 0u64);
        for (pi, id) in sources.ids.iter().enumerate() {
            if own == Some(pi) {
                continue;
            }
            for &video in sources.kinds {
                let window = sources.window(pi, video);
                expected += window.end - window.start;
                let Some(t) = got
                    .values()
                    .find(|t| &t.stream_id == id && t.video == video)
                else {
                    continue;
                };
                let tag = sources.clients[pi].tag;
                let mut counters: Vec<u64> = t
                    .packets
                    .iter()
                    .filter_map(|p| p.parsed.filter(|x| x.intact && x.tag == tag))
                    .map(|x| x.counter)
                    .filter(|c| window.contains(c))
                    .collect();
                counters.sort_unstable();
                counters.dedup();
                received += counters.len() as u64;
                for p in &t.packets {
                    if let Some(x) = p.parsed.filter(|x| window.contains(&x.counter)) {
                        self.latencies
                            .push((p.recv_at_us as f64 - x.sent_at_us as f64) / 1000.0);
                    }
                }
                if let (None, Some(first)) = (own, t.packets.first()) {
                    let join =
                        first.at.duration_since(receiver.connected_at).as_secs_f64() * 1000.0;
                    self.joins.push(join);
                    if video {
                        self.video_joins.push(join);
                    }
                }
            }
        }
        self.expected += expected;
        self.received += received;
        ReceiverReport {
            name: receiver.name.clone(),
            expected,
            received,
            lost: expected.saturating_sub(received),
            // A lone publisher expects nothing, and lost nothing.
            delivery_percent: if expected == 0 {
                100.0
            } else {
                100.0 * received as f64 / expected as f64
            },
        }
    }
}
