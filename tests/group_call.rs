//! A group call through the real server: participants join over the documented protocol with
//! headless WebRTC peers, publish audio and video, and receive everyone else's tracks.

mod common;

use std::time::Duration;

use common::verify::{stop_and_verify, stop_and_verify_complete};
use common::{wait_for, wait_until, Client, ClientOptions, TestServer};

const SETUP: Duration = Duration::from_secs(15);

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
            let from: Vec<_> = received
                .values()
                .filter(|t| &t.stream_id == other)
                .collect();
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

    common::leave_all(clients).await;
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_a_keyframe_first_within_one_second() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    // Periodic keyframes only every 20 s: the late joiner's first keyframe must be one the
    // server asked for.
    let options = ClientOptions {
        keyframe_every: 600,
        ..ClientOptions::default()
    };
    let mut clients = Vec::new();
    for name in ["Ann", "Bob", "Cho"] {
        clients.push(Client::join(&url, "late", name, options.clone()).await);
    }
    for c in &clients {
        wait_for(&format!("{} media", c.name), SETUP, || {
            c.flowing_tracks(20) == 4
        })
        .await;
    }
    let plis_before: u64 = clients
        .iter()
        .map(|c| {
            c.video
                .as_ref()
                .unwrap()
                .plis
                .load(std::sync::atomic::Ordering::SeqCst)
        })
        .sum();

    let joined_at = std::time::Instant::now();
    let dee = Client::join(&url, "late", "Dee", options.clone()).await;
    wait_for("Dee to receive the three video tracks", SETUP, || {
        dee.received()
            .values()
            .filter(|t| t.video && !t.packets.is_empty())
            .count()
            == 3
    })
    .await;
    for t in dee.received().values().filter(|t| t.video) {
        let first = &t.packets[0];
        let parsed = first.parsed.expect("an intact payload");
        assert!(
            parsed.keyframe_start,
            "Dee's first packet of {} is not the start of a keyframe",
            t.track_id
        );
        let after = first.at.duration_since(joined_at);
        eprintln!("Dee: first video of {} after {after:?}", t.stream_id);
        assert!(
            after <= Duration::from_secs(1),
            "first video after {after:?}"
        );
    }
    let plis_after: u64 = clients
        .iter()
        .map(|c| {
            c.video
                .as_ref()
                .unwrap()
                .plis
                .load(std::sync::atomic::Ordering::SeqCst)
        })
        .sum();
    assert!(
        plis_after >= plis_before + 3,
        "each publisher was asked for a keyframe"
    );

    common::leave_all(clients.into_iter().chain([dee])).await;
    server.assert_drained().await;
}

/// The mids on which `client` receives `publisher`'s tracks, from the offers it got.
fn mids_from(client: &Client, publisher: &str) -> Vec<String> {
    let mut mids: Vec<String> = client
        .messages_of("offer")
        .iter()
        .flat_map(|o| o["mids"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["direction"] == "recv" && b["participant_id"] == publisher)
        .map(|b| b["mid"].as_str().unwrap().to_owned())
        .collect();
    mids.sort();
    mids.dedup();
    mids
}

async fn transceivers_inactive(client: &Client, mids: &[String]) -> bool {
    use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
    let mut inactive = 0;
    for t in client.pc.get_transceivers().await {
        if let Some(mid) = t.mid() {
            if mids.contains(&mid.to_string())
                && t.current_direction() == RTCRtpTransceiverDirection::Inactive
            {
                inactive += 1;
            }
        }
    }
    inactive == mids.len()
}

fn left(client: &Client, who: &str) -> Option<String> {
    client
        .messages_of("participant-left")
        .into_iter()
        .find(|m| m["participant_id"] == who)
        .map(|m| m["reason"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_dropping_and_timing_out_remove_participants_and_their_tracks() {
    let mut config = common::test_config();
    config.timeouts.ice_disconnected_ms = 1000;
    config.timeouts.peer_disconnected_ms = 2000;
    config.timeouts.ice_failed_ms = 30_000; // so that the disconnect timeout is what acts
    let server = TestServer::start_with(config).await;
    let url = server.ws_url();
    let mut clients = Vec::new();
    for name in ["Ann", "Bob", "Cho", "Dee"] {
        clients.push(Client::join(&url, "leave", name, ClientOptions::default()).await);
    }
    let mut ids = Vec::new();
    for c in &clients {
        ids.push(c.participant_id().await);
        wait_for(&format!("{} media", c.name), SETUP, || {
            c.flowing_tracks(10) == 6
        })
        .await;
    }
    let [ann, bob, cho, dee] = <[Client; 4]>::try_from(clients).ok().unwrap();

    // Ann leaves: the others are told, and her tracks end on their connections.
    ann.leave();
    for c in [&bob, &cho, &dee] {
        let mids = mids_from(c, &ids[0]);
        assert_eq!(mids.len(), 2, "{} received Ann on two mids", c.name);
        wait_for(
            &format!("{} to hear Ann left", c.name),
            Duration::from_secs(3),
            || left(c, &ids[0]).as_deref() == Some("left"),
        )
        .await;
        common::wait_for_async(
            &format!("Ann's tracks to become inactive on {}'s connection", c.name),
            Duration::from_secs(5),
            || transceivers_inactive(c, &mids),
        )
        .await;
    }
    ann.close().await;
    wait_for("3 participants", Duration::from_secs(3), || {
        server.gauge("participants") == 3
    })
    .await;

    // Dee's browser crashes: the socket drops without a close frame.
    dee.kill_socket();
    for c in [&bob, &cho] {
        wait_for(
            &format!("{} to hear Dee dropped", c.name),
            Duration::from_secs(3),
            || left(c, &ids[3]).as_deref() == Some("disconnected"),
        )
        .await;
    }
    dee.close().await;

    // Cho's network goes away while its signalling stays up: removed after the ICE
    // disconnect (1 s) and the peer-disconnected timeout (2 s).
    let cut_at = std::time::Instant::now();
    cho.cut_network();
    wait_for("Bob to hear Cho timed out", Duration::from_secs(6), || {
        left(&bob, &ids[2]).as_deref() == Some("timed-out")
    })
    .await;
    let after = cut_at.elapsed();
    eprintln!("Cho removed {after:?} after its network was cut");
    assert!(
        after >= Duration::from_secs(2),
        "removed before the timeout: {after:?}"
    );
    wait_for("1 participant", Duration::from_secs(3), || {
        server.gauge("participants") == 1
    })
    .await;
    assert_eq!(
        server.gauge("published_tracks"),
        2,
        "only Bob's tracks remain"
    );
    cho.close().await;

    bob.leave();
    bob.close().await;
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_participants_joining_at_once_all_receive_all_nine_others() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    // Lighter media so that ten senders and ninety receivers fit a small machine.
    let options = ClientOptions {
        video_fps: 10,
        key_packets: 2,
        delta_packets: 1,
        video_packet_size: 600,
        ..ClientOptions::default()
    };
    let joins = (0..10).map(|i| {
        let url = url.clone();
        let options = options.clone();
        async move { Client::join(&url, "ten", &format!("P{i}"), options).await }
    });
    let clients = futures::future::join_all(joins).await;
    for c in &clients {
        wait_for(
            &format!("{} to receive 18 flowing tracks", c.name),
            Duration::from_secs(30),
            || c.flowing_tracks(5) == 18,
        )
        .await;
    }
    let mut ids = Vec::new();
    for c in &clients {
        ids.push(c.participant_id().await);
    }
    for (c, id) in clients.iter().zip(&ids) {
        let received = c.received();
        assert_eq!(received.len(), 18);
        assert!(
            received.values().all(|t| &t.stream_id != id),
            "nobody receives themself"
        );
    }
    // Ninety streams on a small machine: a video packet the kernel drops under load is repaired
    // by NACK and arrives late, so this checks completeness rather than arrival order (and
    // tolerates a rare lost audio packet, which nothing repairs).
    stop_and_verify_complete(&clients, &ids).await;
    common::leave_all(clients).await;
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_is_retransmitted_on_both_legs() {
    use common::verify::verify_complete;
    use std::sync::atomic::Ordering;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let video_only = ClientOptions {
        audio: false,
        ..ClientOptions::default()
    };
    let ann = Client::join(&url, "lossy", "Ann", video_only.clone()).await;
    let bob = Client::join(&url, "lossy", "Bob", video_only.clone()).await;
    for c in [&ann, &bob] {
        wait_for(&format!("{} media", c.name), SETUP, || {
            c.flowing_tracks(10) == 1
        })
        .await;
    }
    // Ann's uplink loses every 10th video packet (the publisher leg, repaired by the server's
    // NACKs to Ann); Bob's downlink loses every 7th (the subscriber leg, repaired by Bob's NACKs
    // to the server), including some of the retransmissions the server forwards late.
    ann.net.drop_out_every.store(10, Ordering::SeqCst);
    bob.net.drop_in_every.store(7, Ordering::SeqCst);
    let target = ann.sent_counter(true) + 400;
    wait_for(
        "400 more video packets from Ann",
        Duration::from_secs(20),
        || ann.sent_counter(true) >= target,
    )
    .await;
    ann.net.drop_out_every.store(0, Ordering::SeqCst);
    bob.net.drop_in_every.store(0, Ordering::SeqCst);
    for c in [&ann, &bob] {
        c.stop_media();
        wait_for("the sender to stop", Duration::from_secs(2), || {
            c.media_stopped()
        })
        .await;
    }
    let dropped = (
        ann.net.dropped_out.load(Ordering::SeqCst),
        bob.net.dropped_in.load(Ordering::SeqCst),
    );
    assert!(
        dropped.0 >= 30 && dropped.1 >= 50,
        "losses really happened: {dropped:?}"
    );
    for (receiver, publisher) in [(&bob, &ann), (&ann, &bob)] {
        let sent = publisher.sent_counter(true);
        // Repairs can take a few NACK rounds (a retransmission may be lost too). If they never
        // complete, verify_complete below names the packets that never arrived.
        wait_until(Duration::from_secs(10), || {
            receiver.received().values().all(|t| {
                let mut c: Vec<u64> = t
                    .packets
                    .iter()
                    .filter_map(|p| p.parsed)
                    .map(|p| p.counter)
                    .collect();
                c.sort_unstable();
                c.dedup();
                c.last() == Some(&(sent - 1)) && c.len() as u64 == sent - c[0]
            })
        })
        .await;
        let t = receiver
            .received()
            .into_values()
            .next()
            .expect("one video track");
        let late = verify_complete(&receiver.name, &t, publisher.tag, sent, 0);
        eprintln!(
            "{} ← {}: complete, {late} packets retransmitted",
            receiver.name, publisher.name
        );
        if receiver.name == "Bob" {
            assert!(
                late as u64 >= dropped.0 + dropped.1 / 2,
                "retransmissions filled the gaps"
            );
        }
    }
    assert!(server.counter("retransmissions", &["sent"]) >= dropped.1);
    common::leave_all([ann, bob]).await;
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forwarded_track_gets_sender_reports_that_match_what_arrived() {
    // Browsers line audio up with video through each stream's sender reports (RTP time against
    // wall clock): every track the server sends must have them, and they must describe what
    // the subscriber is actually receiving.
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut clients = Vec::new();
    for name in ["Ann", "Bob"] {
        clients.push(Client::join(&url, "reports", name, ClientOptions::default()).await);
    }
    for c in &clients {
        wait_for(&format!("{} media", c.name), SETUP, || {
            c.flowing_tracks(20) == 2
        })
        .await;
    }
    // Reports go out every second; three per track, once media flows, within 10 s.
    for c in &clients {
        wait_for(
            &format!("three sender reports on each of {}'s tracks", c.name),
            Duration::from_secs(10),
            || {
                c.received()
                    .values()
                    .all(|t| t.sender_reports.iter().filter(|r| r.received > 0).count() >= 3)
            },
        )
        .await;
    }
    for c in &clients {
        for t in c.received().values() {
            for r in t.sender_reports.iter().filter(|r| r.received > 0) {
                // Counted by the server as it sends: the receiver has those packets, give or
                // take the ones in flight (100 ms of video at most) and none lost on loopback.
                let in_flight = if t.video { 10 } else { 5 };
                assert!(
                    (r.packet_count as i64 - r.received as i64).abs() <= in_flight,
                    "{} {}: the report counts {} packets, {} arrived",
                    c.name,
                    t.track_id,
                    r.packet_count,
                    r.received
                );
                // Its RTP time is "now" on the stream's clock: within 50 ms of the receiver's
                // own reckoning from the packets it got.
                let local = r.local_rtp_time.expect("packets arrived before the report");
                let apart = r.rtp_time.wrapping_sub(local) as i32;
                let tolerance = (r.clock_rate / 20) as i32;
                assert!(
                    apart.abs() <= tolerance,
                    "{} {}: report RTP time {} is {apart} ticks from {local} (clock {})",
                    c.name,
                    t.track_id,
                    r.rtp_time,
                    r.clock_rate
                );
            }
        }
    }
    common::leave_all(clients).await;
    server.assert_drained().await;
}
