//! A drop-in room: one participant stays while visitors come and go in every way a visitor can
//! leave (a clean leave, a dropped socket, a peer that never completes ICE). Nothing they did
//! stays behind on the server, and the one who stays still receives every newcomer.
//!
//! Every visitor's tracks reach the stayer on the transceivers the first visitor's came on (they
//! are recycled), so the stayer's offers stay as big as with one visitor present.
//!
//! CI runs 30 visits; `PLAZA_CHURN_VISITS=1000` runs the long version.

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
    // The stayer keeps the two transceivers the visitors' tracks came on, for the next
    // visitor (each with the reader of its RTCP); everything else is as before the visits.
    let kept = |role: &str| i64::from(role == "egress_rtcp") * 2;
    let expected: Vec<i64> = plaza::metrics::TASK_ROLES
        .iter()
        .zip(&tasks_at_start)
        .map(|(role, n)| n + kept(role))
        .collect();
    let came_back = common::wait_until(T, || tasks_now() == expected).await;
    assert!(
        came_back,
        "tasks by role {:?}: {:?} after the visits, {:?} expected ({:?} before)",
        plaza::metrics::TASK_ROLES,
        tasks_now(),
        expected,
        tasks_at_start
    );
    // The stayer's connection is as big as the most people it received at once: its own two
    // m-lines and one visitor's two, reused by every visitor since.
    let offers = stayer.messages_of("offer");
    let last_offer = offers.last().expect("the stayer got offers");
    let m_lines = |offer: &serde_json::Value| {
        offer["sdp"]
            .as_str()
            .unwrap_or_default()
            .matches("\nm=")
            .count()
    };
    assert_eq!(
        m_lines(last_offer),
        4,
        "m-lines in the stayer's last offer after {visits} visits"
    );
    let biggest_first_offer = offers[..offers.len().min(4)]
        .iter()
        .map(|o| o["sdp"].as_str().unwrap_or_default().len())
        .max()
        .unwrap_or_default();
    let last_size = last_offer["sdp"].as_str().unwrap_or_default().len();
    assert!(
        last_size <= biggest_first_offer + biggest_first_offer / 10,
        "the stayer's last offer has {last_size} bytes after {visits} visits, \
         {biggest_first_offer} with the first visitor present"
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

/// Answers every offer the client has not answered yet; returns how many it has answered.
async fn answer_new_offers(c: &Client, answered: usize) -> usize {
    let offers = c.messages_of("offer").len();
    if offers > answered {
        let sdp = c.answer_offer().await;
        c.send(serde_json::json!({"type": "answer", "sdp": sdp}));
    }
    offers
}

/// The mids of the latest offer's `recv` bindings for `participant`.
fn recv_mids(c: &Client, participant: &str) -> Vec<String> {
    let offers = c.messages_of("offer");
    let mut mids: Vec<String> = offers.last().expect("an offer")["mids"]
        .as_array()
        .expect("mids")
        .iter()
        .filter(|b| b["direction"] == "recv" && b["participant_id"] == participant)
        .map(|b| b["mid"].as_str().unwrap().to_owned())
        .collect();
    mids.sort();
    mids
}

/// The latest offer's `recv` binding for `participant`'s `kind` track: its track id.
fn recv_track(c: &Client, participant: &str, kind: &str) -> String {
    let offers = c.messages_of("offer");
    let binding = offers.last().expect("an offer")["mids"]
        .as_array()
        .expect("mids")
        .iter()
        .find(|b| {
            b["direction"] == "recv" && b["participant_id"] == participant && b["kind"] == kind
        })
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} binding for {participant}"));
    binding["track_id"].as_str().unwrap().to_owned()
}

/// The stayer answers by hand, so that one of its offers is outstanding while a track it
/// receives ends and the next one comes: the m-line is then `sendonly` in both offers around
/// the change, the browser fires no `track` event, and only the `mids` table says that the
/// media on that mid is now someone else's. It must be received as the new track, on the same
/// mids, as one continuous stream (sequence numbers going on from the old track's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_m_line_carries_the_next_track_as_one_continuous_stream() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let by_hand = ClientOptions {
        audio: false,
        video: false,
        auto_answer: false,
        ..ClientOptions::default()
    };
    let stayer = Client::join(&url, "reuse", "Stayer", by_hand).await;
    stayer.participant_id().await;

    let ann = Client::join(&url, "reuse", "Ann", ClientOptions::default()).await;
    let ann_id = ann.participant_id().await;
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + T;
    while stayer.flowing_tracks(20) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stayer did not receive Ann's two tracks within {T:?}"
        );
        answered = answer_new_offers(&stayer, answered).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ann_mids = recv_mids(&stayer, &ann_id);
    assert_eq!(ann_mids.len(), 2);
    let ann_video = recv_track(&stayer, &ann_id, "video");

    // Carl's arrival leaves an offer outstanding at the stayer.
    let carl = Client::join(&url, "reuse", "Carl", ClientOptions::default()).await;
    let carl_id = carl.participant_id().await;
    let offers_before = answered;
    wait_for("the offer for Carl's tracks", T, || {
        stayer.messages_of("offer").len() > offers_before
    })
    .await;

    // Ann leaves and Bob comes while that offer waits for its answer.
    ann.leave();
    ann.close().await;
    let bob = Client::join(&url, "reuse", "Bob", ClientOptions::default()).await;
    let bob_id = bob.participant_id().await;
    wait_for("the stayer to hear of Bob's two tracks", T, || {
        stayer
            .messages_of("track-published")
            .iter()
            .filter(|m| m["participant_id"] == bob_id.as_str())
            .count()
            == 2
    })
    .await;
    let ann_last_seq = stayer.received()[&ann_video]
        .packets
        .last()
        .expect("Ann's video arrived")
        .seq;

    let deadline = tokio::time::Instant::now() + T;
    let flowing = |who: &str| {
        let received = stayer.received();
        ["audio", "video"].iter().all(|kind| {
            let offers = stayer.messages_of("offer");
            let bound = offers.last().unwrap()["mids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["participant_id"] == who && b["kind"] == *kind);
            bound
                && received
                    .get(&recv_track(&stayer, who, kind))
                    .is_some_and(|t| t.packets.len() >= 20)
        })
    };
    while !(flowing(&bob_id) && flowing(&carl_id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stayer did not receive Bob's and Carl's tracks within {T:?}"
        );
        answered = answer_new_offers(&stayer, answered).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        recv_mids(&stayer, &bob_id),
        ann_mids,
        "Bob's tracks came on the m-lines Ann's left"
    );
    let offers = stayer.messages_of("offer");
    let m_lines = offers.last().unwrap()["sdp"]
        .as_str()
        .unwrap()
        .matches("\nm=")
        .count();
    assert_eq!(m_lines, 4, "two m-lines for Bob (reused) and two for Carl");
    let bob_video = recv_track(&stayer, &bob_id, "video");
    let first_of_bob = stayer.received()[&bob_video].packets[0].seq;
    assert_eq!(
        first_of_bob,
        ann_last_seq.wrapping_add(1),
        "Bob's video goes on from Ann's last sequence number on the reused m-line"
    );
    common::leave_all([stayer, bob, carl]).await;
    server.assert_drained().await;
}
