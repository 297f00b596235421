//! ICE through the real server: the server connects on the client's own checks and sends
//! nothing to an address that only a client named in a candidate (no reflector), and a
//! connection may trickle a bounded number of candidates in its whole life.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::{wait_for, TestServer};

const T: Duration = Duration::from_secs(5);

/// Candidates a connection may trickle in its life (`rtc/candidates.rs`).
const MAX_CANDIDATES: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_candidates_are_capped_and_never_contacted() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let (ann, bob, _) = common::call_of_two(&url, "ice").await;

    // Decoys on loopback: had the server checked the candidates naming them, they would hear
    // STUN within a check interval or two.
    let mut decoys = Vec::new();
    for i in 0..4u8 {
        let socket = tokio::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, 2 + i), 0))
            .await
            .unwrap();
        decoys.push(socket);
    }
    let errors_before = ann.messages_of("error").len();
    let sent_at = Instant::now();
    // Ann's own candidates were trickled already; these fill her budget and go over it.
    for n in 0..MAX_CANDIDATES + 10 {
        let decoy = decoys[n % decoys.len()].local_addr().unwrap();
        ann.send(json!({"type": "candidate", "candidate": {
            "candidate": format!(
                "candidate:{n} 1 udp 2122260223 {} {} typ host", decoy.ip(), decoy.port()
            ),
            "sdpMid": "0"
        }}));
    }
    let refused = || {
        ann.messages_of("error")[errors_before..]
            .iter()
            .filter(|e| e["code"] == "invalid-candidate" && e["request"] == "candidate")
            .count()
    };
    wait_for("the over-the-limit candidates to be refused", T, || {
        refused() >= 10
    })
    .await;

    // The call goes on for longer than any check schedule would take to reach a candidate.
    let before = ann.received_count();
    wait_for(
        "two more seconds of media after the candidates",
        Duration::from_secs(10),
        || sent_at.elapsed() >= Duration::from_secs(2) && ann.received_count() > before + 100,
    )
    .await;
    // Ann's own trickled candidates counted too, so a few more than 10 may be refused.
    assert!(
        (10..=20).contains(&refused()),
        "everything past {MAX_CANDIDATES} in the connection's life is refused ({} were)",
        refused()
    );
    let mut buf = [0u8; 1500];
    for decoy in &decoys {
        match decoy.try_recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((n, from)) => panic!(
                "the server sent {n} bytes from {from} to {}, an address only a candidate named",
                decoy.local_addr().unwrap()
            ),
            Err(e) => panic!("decoy socket: {e}"),
        }
    }
    assert!(ann.messages_of("participant-left").is_empty());
    common::leave_all(vec![ann, bob]).await;
    server.assert_drained().await;
}
