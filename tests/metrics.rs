//! `/metrics` during and after a real call: the page parses as Prometheus text, the gauges go up
//! and back down, the counters and histograms move.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Client, ClientOptions, TestServer};

/// A minimal reader of the Prometheus text format: every sample line must be
/// `name{label="value",...} number`; comments must be `# HELP` or `# TYPE`.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next(), parts.next(), parts.next());
            assert!(
                matches!(kind, Some("HELP") | Some("TYPE")),
                "bad comment: {line}"
            );
            assert!(name.is_some() && value.is_some(), "bad comment: {line}");
            if kind == Some("TYPE") {
                let t = value.unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "bad type: {line}"
                );
                types.insert(name.unwrap().to_owned(), t.to_owned());
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {line}"
                );
            }
        }
        samples.insert(series.to_owned(), value);
    }
    assert!(!types.is_empty(), "no # TYPE lines");
    samples
}

async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.http).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: plaza\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    parse(body)
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_real_call() {
    let server = TestServer::start().await;
    let before = scrape(&server).await;
    assert_eq!(get(&before, "plaza_participants"), 0.0);
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(before.contains_key(name), "{name} is exported");
    }
    assert!(before.contains_key("plaza_udp_receive_buffer_errors_total"));

    let url = server.ws_url();
    let ann = Client::join(&url, "metrics", "Ann", ClientOptions::default()).await;
    let bob = Client::join(&url, "metrics", "Bob", ClientOptions::default()).await;
    // Poll /metrics until the call shows; a bounded wait that says what it waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let during = loop {
        let m = scrape(&server).await;
        let ready = get(&m, "plaza_participants") == 2.0
            && get(&m, "plaza_published_tracks") == 4.0
            && get(&m, "plaza_subscriptions") == 4.0
            && get(&m, r#"plaza_peer_connection_states{state="connected"}"#) == 2.0
            && get(
                &m,
                r#"plaza_rtp_packets_total{direction="out",kind="video"}"#,
            ) > 100.0
            && get(&m, "plaza_rtt_seconds_count") > 0.0
            && get(&m, "plaza_join_to_first_media_seconds_count") == 2.0;
        if ready {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the call to show in /metrics; last scrape: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = &during;
    assert_eq!(get(m, "plaza_rooms"), 1.0);
    assert_eq!(get(m, "plaza_peer_connections"), 2.0);
    for dir in ["in", "out"] {
        for kind in ["audio", "video"] {
            let packets = format!(r#"plaza_rtp_packets_total{{direction="{dir}",kind="{kind}"}}"#);
            let bytes = format!(r#"plaza_rtp_bytes_total{{direction="{dir}",kind="{kind}"}}"#);
            assert!(get(m, &packets) > 0.0, "{packets}");
            assert!(get(m, &bytes) > get(m, &packets) * 12.0, "{bytes}");
        }
    }
    assert!(
        get(
            m,
            r#"plaza_keyframe_requests_total{direction="out",type="pli"}"#
        ) >= 2.0
    );
    assert!(get(m, r#"plaza_signal_messages_total{type="join"}"#) == 2.0);
    assert!(get(m, r#"plaza_signal_messages_total{type="answer"}"#) >= 2.0);
    assert!(get(m, "plaza_jitter_seconds_count") > 0.0);
    assert!(get(m, "plaza_fraction_lost_count") > 0.0);
    let join_p_under_1s = get(m, r#"plaza_join_to_first_media_seconds_bucket{le="1"}"#);
    assert_eq!(join_p_under_1s, 2.0, "both joins saw media within 1 s");
    // One forwarding-delay observation per published packet the rooms handled (the count
    // trails the packet counter by at most the wake-up in progress), nearly all well under
    // 100 ms on an idle machine.
    let published = get(m, r#"plaza_rtp_packets_total{direction="in",kind="audio"}"#)
        + get(m, r#"plaza_rtp_packets_total{direction="in",kind="video"}"#);
    let delays = get(m, "plaza_forward_delay_seconds_count");
    assert!(
        delays <= published && delays >= published - 64.0,
        "{delays} forwarding delays for {published} published packets"
    );
    let under_100ms = get(m, r#"plaza_forward_delay_seconds_bucket{le="0.1"}"#);
    assert!(
        under_100ms >= delays * 0.99,
        "{under_100ms} of {delays} under 100 ms"
    );

    bob.send(serde_json::json!({"type": "dance"}));
    bob.wait_error(0, Duration::from_secs(5)).await;

    common::leave_all([ann, bob]).await;
    server.assert_drained().await;
    let after = scrape(&server).await;
    for gauge in [
        "plaza_rooms",
        "plaza_participants",
        "plaza_published_tracks",
        "plaza_subscriptions",
        "plaza_peer_connections",
    ] {
        assert_eq!(get(&after, gauge), 0.0, "{gauge} back to 0");
    }
    for state in [
        "new",
        "connecting",
        "connected",
        "disconnected",
        "failed",
        "closed",
    ] {
        let s = format!(r#"plaza_peer_connection_states{{state="{state}"}}"#);
        assert_eq!(get(&after, &s), 0.0, "{s} back to 0");
    }
    assert_eq!(
        get(&after, r#"plaza_signal_errors_total{code="unknown-type"}"#),
        1.0
    );
    assert!(
        get(
            &after,
            r#"plaza_rtp_packets_total{direction="out",kind="video"}"#
        ) >= get(
            m,
            r#"plaza_rtp_packets_total{direction="out",kind="video"}"#
        ),
        "counters never go down"
    );
}
