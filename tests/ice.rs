//! ICE through the real server: the server connects on the client's own checks, and on its own
//! checks towards the client's trickled candidates when the client's never arrive.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use common::{wait_for, Client, ClientOptions, TestServer};

/// The server holds a client's trickled candidates for a second after the first answer (its
/// checks normally connect sooner), then uses them.
const CONNECT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_checks_never_arrive_is_connected_by_the_servers_checks() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let ann = Client::join(
        &url,
        "ice",
        "Ann",
        ClientOptions {
            audio: false,
            auto_answer: false,
            ..ClientOptions::default()
        },
    )
    .await;
    // webrtc-ice gives up on a pair after 8 unanswered checks: drop all of them, as a firewall
    // that only lets replies out would, so that only the server's checks can connect Ann.
    ann.net.drop_out_checks.store(8, Ordering::SeqCst);
    ann.wait_message("an offer", CONNECT, |m| m["type"] == "offer")
        .await;
    let answer = ann.answer_offer().await;
    ann.send(json!({"type": "answer", "sdp": answer}));
    let bob = Client::join(
        &url,
        "ice",
        "Bob",
        ClientOptions {
            audio: false,
            video: false,
            ..ClientOptions::default()
        },
    )
    .await;
    wait_for("Bob to receive Ann's video", CONNECT, || {
        bob.flowing_tracks(10) == 1
    })
    .await;
    assert_eq!(
        ann.net.drop_out_checks.load(Ordering::SeqCst),
        0,
        "all of Ann's first checks were lost"
    );
    common::leave_all(vec![ann, bob]).await;
    server.assert_drained().await;
}
