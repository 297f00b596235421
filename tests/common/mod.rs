//! Test harness: a real Plaza server on 127.0.0.1 and headless WebRTC clients (webrtc-rs peers)
//! that speak only the documented protocol over a real WebSocket.
//!
//! Clients publish synthetic media whose payloads encode (publisher tag, counter), so a receiver
//! can check every packet is identical to what was sent, in order, with nothing lost.

#![allow(dead_code, unused_imports)]

pub mod mutate;
pub mod process;
pub mod signal_seeds;
pub mod verify;

pub use plaza::client;
pub use plaza::client::{wait_for, wait_until};

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use plaza::config::Config;
use plaza::server::{start, AppState};
use tokio::sync::oneshot;

pub use plaza::client::{Client, ClientOptions};

/// Like [`wait_for`] with an async condition.
pub async fn wait_for_async<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ann and Bob in `room`, each publishing audio and video, once each receives both of the
/// other's tracks; with their participant ids.
pub async fn call_of_two(url: &str, room: &str) -> (Client, Client, Vec<String>) {
    let ann = Client::join(url, room, "Ann", ClientOptions::default()).await;
    let bob = Client::join(url, room, "Bob", ClientOptions::default()).await;
    let ids = vec![ann.participant_id().await, bob.participant_id().await];
    for c in [&ann, &bob] {
        wait_for("the call to flow", Duration::from_secs(15), || {
            c.flowing_tracks(20) == 2
        })
        .await;
    }
    (ann, bob, ids)
}

/// Every client leaves and closes its peer connection.
pub async fn leave_all(clients: impl IntoIterator<Item = Client>) {
    for c in clients {
        c.leave();
        c.close().await;
    }
}

pub struct TestServer {
    pub http: SocketAddr,
    pub udp: SocketAddr,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
}

/// A config for tests: loopback only, ephemeral ports, 127.0.0.1 advertised.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".into();
    c.http.static_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/static").into();
    c.rtc.udp_bind = "127.0.0.1".into();
    c.rtc.udp_port = 0;
    c.rtc.advertise_ips = vec!["127.0.0.1".into()];
    c.log.level = "warn".into();
    c
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        config.validate().expect("test config is valid");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,webrtc=off".into()))
            .with_test_writer()
            .try_init();
        let (tx, rx) = oneshot::channel::<()>();
        let running = start(config, async {
            let _ = rx.await;
        })
        .await
        .expect("server starts");
        TestServer {
            http: running.http_addr,
            udp: running.udp_addr,
            state: running.state,
            shutdown: Some(tx),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    pub fn gauge(&self, name: &str) -> i64 {
        let m = &self.state.metrics;
        match name {
            "rooms" => m.rooms.get(),
            "participants" => m.participants.get(),
            "peer_connections" => m.peer_connections.get(),
            "published_tracks" => m.published_tracks.get(),
            "subscriptions" => m.subscriptions.get(),
            other => panic!("no gauge {other}"),
        }
    }

    pub fn live_tasks(&self) -> i64 {
        self.state.metrics.live_tasks()
    }

    pub fn counter(&self, name: &str, labels: &[&str]) -> u64 {
        let m = &self.state.metrics;
        let vec = match name {
            "rtp_packets" => &m.rtp_packets,
            "dropped_packets" => &m.dropped_packets,
            "keyframe_requests" => &m.keyframe_requests,
            "signal_errors" => &m.signal_errors,
            "retransmissions" => &m.retransmissions,
            "rejected_datagrams" => &m.rejected_datagrams,
            "slow_client_disconnects" => &m.slow_client_disconnects,
            other => panic!("no counter {other}"),
        };
        vec.with_label_values(labels).get()
    }

    /// Waits until the server holds no rooms, participants, peer connections or tasks.
    pub async fn assert_drained(&self) {
        wait_for(
            "the server to release every room, participant, peer connection and task",
            Duration::from_secs(15),
            || {
                self.gauge("rooms") == 0
                    && self.gauge("participants") == 0
                    && self.gauge("peer_connections") == 0
                    && self.gauge("published_tracks") == 0
                    && self.gauge("subscriptions") == 0
                    && self.live_tasks() == 0
            },
        )
        .await;
        assert_eq!(self.state.registry.room_count(), 0);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
