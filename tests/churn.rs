//! A drop-in room: one participant stays while visitors come and go in every way a visitor can
//! leave (a clean leave, a dropped socket, a peer that never completes ICE). Nothing they did
//! stays behind on the server, and the one who stays still receives every newcomer.
//!
//! CI runs 30 visits; `PLAZA_CHURN_VISITS=1000` runs the long version. The day-long room (SDP and transceivers that grow
//! with every visitor) is open work of the hostile-input issue.

mod common;

use std::time::Duration;

use common::{wait_for, Client, ClientOptions, TestServer};

const T: Duration = Duration::from_secs(10);

/// Open file descriptors of this process (server and clients alike).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_that_leave_in_every_way_leave_nothing_behind() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let stayer = Client::join(&url, "drop-in", "Stayer", ClientOptions::default()).await;
    stayer.participant_id().await;
    // Its session, its room, and the reading of its two published tracks and their RTCP.
    let tasks = |role: &str| server.state.metrics.tasks.with_label_values(&[role]).get();
    wait_for("the stayer's media to be read", T, || {
        tasks("ingest") == 2 && tasks("ingest_rtcp") == 2
    })
    .await;
    let tasks_at_start: Vec<i64> = plaza::metrics::TASK_ROLES
        .iter()
        .map(|r| tasks(r))
        .collect();
    let fds_at_start = open_fds();

    // 30 in CI (a few seconds); `PLAZA_CHURN_VISITS=1000` for the long run.
    let visits: usize = std::env::var("PLAZA_CHURN_VISITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    for i in 0..visits {
        let name = format!("Visitor{i}");
        match i % 3 {
            // Joins, publishes, is received, then leaves cleanly (0) or its browser crashes
            // and the WebSocket drops without a word (1).
            0 | 1 => {
                let known = stayer.flowing_tracks(1);
                let v = Client::join(&url, "drop-in", &name, ClientOptions::default()).await;
                wait_for(
                    &format!("the stayer to receive visitor {i}'s tracks"),
                    T,
                    || stayer.flowing_tracks(1) == known + 2,
                )
                .await;
                if i % 3 == 0 {
                    v.leave();
                } else {
                    v.kill_socket();
                }
                v.close().await;
            }
            // Joins and never answers, so its peer connection never connects; then goes away.
            _ => {
                let v = Client::join(
                    &url,
                    "drop-in",
                    &name,
                    ClientOptions {
                        auto_answer: false,
                        ..ClientOptions::default()
                    },
                )
                .await;
                v.wait_message("an offer", T, |m| m["type"] == "offer")
                    .await;
                v.close().await;
            }
        }
        wait_for("the visitor to be gone from the server", T, || {
            server.gauge("participants") == 1 && server.gauge("peer_connections") == 1
        })
        .await;
    }

    let tasks_now = || -> Vec<i64> {
        plaza::metrics::TASK_ROLES
            .iter()
            .map(|r| tasks(r))
            .collect()
    };
    let came_back = common::wait_until(T, || tasks_now() == tasks_at_start).await;
    assert!(
        came_back,
        "tasks by role {:?}: {:?} after the visits, {:?} before",
        plaza::metrics::TASK_ROLES,
        tasks_now(),
        tasks_at_start
    );
    let fds = open_fds();
    assert!(
        fds <= fds_at_start + fds_at_start / 20,
        "{fds} file descriptors open after {visits} visits, {fds_at_start} before"
    );
    assert_eq!(server.gauge("rooms"), 1);
    assert_eq!(
        server.gauge("published_tracks"),
        2,
        "only the stayer's tracks"
    );

    // The one who stayed still receives a newcomer, and is received.
    let known = stayer.flowing_tracks(1);
    let last = Client::join(&url, "drop-in", "Last", ClientOptions::default()).await;
    wait_for("the stayer to receive the last newcomer", T, || {
        stayer.flowing_tracks(1) == known + 2
    })
    .await;
    wait_for("the newcomer to receive the stayer", T, || {
        last.flowing_tracks(20) == 2
    })
    .await;
    common::leave_all([stayer, last]).await;
    server.assert_drained().await;
}
