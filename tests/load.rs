//! plaza-load's accounting, against a real server: what it reports is what really arrived.

mod common;

use std::time::Duration;

use common::TestServer;
use plaza::load::{run, LoadConfig};

fn config(server: &TestServer) -> LoadConfig {
    LoadConfig {
        url: server.ws_url(),
        room: "load".into(),
        publishers: 2,
        subscribers: 2,
        duration: Duration::from_secs(3),
        video_bitrate: 800_000,
        video_fps: 30,
        audio: true,
        aligned_keyframes: false,
        server_pid: Some(std::process::id()),
        drop_audio_every: 0,
        live: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_reports_full_delivery_latency_and_join_time() {
    let server = TestServer::start().await;
    let report = run(config(&server)).await.expect("the run completes");
    println!("{}", report.table());
    // 2 publishers × (≈ 50 audio + ≈ 100 video packets/s) × 3 s, to each of 2 subscribers
    // and to the other publisher.
    assert!(
        report.packets_expected > 2000,
        "{}",
        report.packets_expected
    );
    assert!(
        report.delivery_percent >= 99.9,
        "{}",
        report.delivery_percent
    );
    assert_eq!(report.per_subscriber.len(), 2);
    // Publishers are in the call: each receives the other, and that is accounted too.
    assert_eq!(report.per_publisher.len(), 2);
    for p in &report.per_publisher {
        assert!(p.expected > 300, "{p:?}");
        assert!(p.delivery_percent >= 99.9, "{p:?}");
    }
    let every_receiver: u64 = report
        .per_subscriber
        .iter()
        .chain(&report.per_publisher)
        .map(|r| r.expected)
        .sum();
    assert_eq!(report.packets_expected, every_receiver);
    assert!(report.latency_ms_p50 > 0.0 && report.latency_ms_p99 < 1000.0);
    assert!(report.join_ms_p95 > 0.0 && report.join_ms_p95 < 2000.0);
    // Measured on this test process, which holds the server: a real, positive figure.
    assert!(report.server_cpu_percent.unwrap() > 0.0);
    assert!(report.server_rss_mb_after.unwrap() > 1.0);
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_a_subscriber_never_got_are_counted_as_lost() {
    let server = TestServer::start().await;
    let report = run(LoadConfig {
        drop_audio_every: 10,
        ..config(&server)
    })
    .await
    .expect("the run completes");
    println!("{}", report.table());
    let dropped = report.packets_dropped_deliberately;
    let lossy = &report.per_subscriber[0];
    let clean = &report.per_subscriber[1];
    assert!(dropped >= 20, "the fault was injected: {dropped}");
    // Every dropped audio packet is a loss (audio is not retransmitted); a packet or two at
    // the window's edges can be dropped without being in the window.
    assert!(
        lossy.lost <= dropped && lossy.lost + 3 >= dropped,
        "reported {} lost, dropped {dropped}",
        lossy.lost
    );
    assert!(lossy.delivery_percent < 100.0);
    assert_eq!(clean.lost, 0, "the other subscriber lost nothing");
    server.assert_drained().await;
}
