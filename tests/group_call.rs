//! A group call through the real server: participants join over the documented protocol with
//! headless WebRTC peers, publish audio and video, and receive everyone else's tracks.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::client::RecvTrack;
use common::{wait_for, Client, ClientOptions, TestServer};

const SETUP: Duration = Duration::from_secs(15);

/// Checks one received track against what its publisher sent: every packet intact and from that
/// publisher, counters and sequence numbers consecutive (in order, nothing lost), video starting
/// at a keyframe, and the last packet the publisher sent present.
fn verify_stream(receiver: &str, t: &RecvTrack, publisher_tag: u32, sent: u64) {
    let what = format!("{receiver} ← track {} of {}", t.track_id, t.stream_id);
    assert!(!t.packets.is_empty(), "{what}: nothing received");
    let parsed: Vec<_> = t
        .packets
        .iter()
        .map(|p| p.parsed.unwrap_or_else(|| panic!("{what}: unparseable payload")))
        .collect();
    for (i, p) in parsed.iter().enumerate() {
        assert!(p.intact, "{what}: payload {i} differs from what was sent");
        assert_eq!(p.tag, publisher_tag, "{what}: packet from the wrong publisher");
    }
    for (i, w) in t.packets.windows(2).enumerate() {
        let (a, b) = (w[0].parsed.unwrap(), w[1].parsed.unwrap());
        assert_eq!(b.counter, a.counter + 1, "{what}: gap or reorder after packet {i}");
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{what}: sequence numbers not continuous after packet {i}"
        );
    }
    if t.video {
        assert!(parsed[0].keyframe_start, "{what}: first video packet is not a keyframe");
    }
    assert_eq!(
        parsed.last().unwrap().counter + 1,
        sent,
        "{what}: the last packets sent never arrived"
    );
}

/// Stops everyone's media, waits for it to drain, and verifies every stream every client got.
async fn stop_and_verify(clients: &[Client], ids: &[String]) {
    for c in clients {
        c.stop_media();
    }
    for c in clients {
        wait_for("the sender to stop", Duration::from_secs(2), || c.media_stopped()).await;
    }
    // The counters are final now: wait until the last packet of each track has arrived.
    let tags: HashMap<&str, (u32, u64, u64)> = ids
        .iter()
        .zip(clients)
        .map(|(id, c)| (id.as_str(), (c.tag, c.sent_counter(false), c.sent_counter(true))))
        .collect();
    for c in clients {
        wait_for(
            &format!("{} to receive the last packet of every track", c.name),
            Duration::from_secs(5),
            || {
                c.received().values().all(|t| {
                    let (_, audio, video) = tags[t.stream_id.as_str()];
                    let sent = if t.video { video } else { audio };
                    t.packets.last().and_then(|p| p.parsed).map(|p| p.counter + 1) == Some(sent)
                })
            },
        )
        .await;
        let mut verified = 0;
        for t in c.received().values() {
            let (tag, audio, video) = tags[t.stream_id.as_str()];
            verify_stream(&c.name, t, tag, if t.video { video } else { audio });
            verified += t.packets.len();
        }
        eprintln!("{}: {verified} packets on {} tracks verified", c.name, c.received().len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_each_receive_the_other_two_intact_in_order() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut clients = Vec::new();
    for name in ["Ann", "Bob", "Cho"] {
        clients.push(Client::join(&url, "three", name, ClientOptions::default()).await);
    }
    let mut ids = Vec::new();
    for c in &clients {
        ids.push(c.participant_id().await);
    }
    for c in &clients {
        wait_for(
            &format!("{} to receive 4 flowing tracks", c.name),
            SETUP,
            || c.flowing_tracks(20) == 4,
        )
        .await;
    }
    // Exactly the other two participants' tracks, one audio and one video each.
    for (c, id) in clients.iter().zip(&ids) {
        let received = c.received();
        assert_eq!(received.len(), 4, "{} has {:?}", c.name, received.keys());
        for other in ids.iter().filter(|o| *o != id) {
            let from: Vec<_> = received.values().filter(|t| &t.stream_id == other).collect();
            assert_eq!(from.len(), 2, "{} gets two tracks from {other}", c.name);
            assert_eq!(from.iter().filter(|t| t.video).count(), 1);
        }
    }
    // Let media flow for a while so the streams are long (and video sequence numbers wrap).
    let target = clients[0].sent_counter(true) + 300;
    wait_for("300 more video packets", Duration::from_secs(20), || {
        clients[0].sent_counter(true) >= target
    })
    .await;
    stop_and_verify(&clients, &ids).await;

    for c in clients {
        c.leave();
        c.close().await;
    }
    server.assert_drained().await;
}
