//! Bad input from one client gets a clear error with a stable code, the session goes on, and a
//! call in progress in the same room never notices: malformed and oversized messages, unknown
//! types and ids, messages out of order, hostile SDP and candidates, floods, garbage UDP.

mod common;

use std::time::Duration;

use common::verify::stop_and_verify;
use common::{test_config, wait_for, Client, ClientOptions, TestServer};
use serde_json::json;

const T: Duration = Duration::from_secs(5);

/// Asserts that the next error `client` receives has `code` (and echoes `request`, if given).
async fn expect_error(client: &Client, seen: &mut usize, code: &str, request: Option<&str>) {
    let e = client.wait_error(*seen, T).await;
    *seen += 1;
    assert_eq!(e["code"], code, "unexpected error {e}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "errors carry a readable message: {e}"
    );
    if let Some(r) = request {
        assert_eq!(
            e["request"], r,
            "error names the offending message type: {e}"
        );
    }
}

fn quiet() -> ClientOptions {
    ClientOptions {
        audio: false,
        video: false,
        auto_answer: false,
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_error_and_a_call_in_progress_is_unaffected() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let ann = Client::join(&url, "call", "Ann", ClientOptions::default()).await;
    let bob = Client::join(&url, "call", "Bob", ClientOptions::default()).await;
    let ids = vec![ann.participant_id().await, bob.participant_id().await];
    for c in [&ann, &bob] {
        wait_for("the call to flow", Duration::from_secs(15), || {
            c.flowing_tracks(20) == 2
        })
        .await;
    }

    let x = Client::connect(&url, "Xavier", &quiet()).await;
    let mut seen = 0;

    // Before joining: only join and ping are allowed.
    x.send(json!({"type": "ping", "id": 7}));
    x.wait_message("pong", T, |m| m["type"] == "pong" && m["id"] == 7)
        .await;
    for msg in [
        json!({"type": "publish", "tracks": []}),
        json!({"type": "answer", "sdp": "v=0"}),
        json!({"type": "chat", "text": "hi"}),
        json!({"type": "leave"}),
    ] {
        let kind = msg["type"].as_str().unwrap().to_owned();
        x.send(msg);
        expect_error(&x, &mut seen, "not-joined", Some(&kind)).await;
    }
    // Malformed, unknown, binary, oversized.
    x.send_text("{nope".into());
    expect_error(&x, &mut seen, "malformed-message", None).await;
    x.send_text("[1,2,3]".into());
    expect_error(&x, &mut seen, "malformed-message", None).await;
    x.send_text(r#"{"type": 5}"#.into());
    expect_error(&x, &mut seen, "malformed-message", None).await;
    x.send(json!({"type": "dance", "style": "tango"}));
    expect_error(&x, &mut seen, "unknown-type", Some("dance")).await;
    x.send_binary(vec![0xde, 0xad, 0xbe, 0xef]);
    expect_error(&x, &mut seen, "malformed-message", None).await;
    let huge = json!({"type": "chat", "text": "x".repeat(300_000)});
    x.send(huge);
    expect_error(&x, &mut seen, "message-too-large", None).await;
    // Invalid joins.
    x.send(json!({"type": "join", "version": 1, "room": "call"}));
    expect_error(&x, &mut seen, "invalid-message", Some("join")).await;
    x.send(json!({"type": "join", "version": 99, "room": "call", "name": "X"}));
    expect_error(&x, &mut seen, "unsupported-version", Some("join")).await;
    x.send(json!({"type": "join", "version": 1, "room": "call", "name": "   "}));
    expect_error(&x, &mut seen, "invalid-message", Some("join")).await;
    x.send(json!({"type": "join", "version": 1, "room": "call", "name": "bell\u{7}"}));
    expect_error(&x, &mut seen, "invalid-message", Some("join")).await;
    x.send(json!({"type": "join", "version": 1, "room": "", "name": "X"}));
    expect_error(&x, &mut seen, "invalid-message", Some("join")).await;
    x.send(json!({"type": "join", "version": 1, "room": "call", "name": "X", "extra": 1}));
    expect_error(&x, &mut seen, "invalid-message", Some("join")).await;
    let too_many: Vec<_> = (0..9)
        .map(|i| json!({"cid": format!("c{i}"), "kind": "audio"}))
        .collect();
    x.send(json!({"type": "join", "version": 1, "room": "call", "name": "X", "publish": too_many}));
    expect_error(&x, &mut seen, "too-many-tracks", Some("join")).await;

    // A good join after all that: the session went on.
    x.send(
        json!({"type": "join", "version": 1, "room": "call", "name": "Xavier",
        "publish": [{"cid": "mic", "kind": "audio"}]}),
    );
    x.wait_message("joined", T, |m| m["type"] == "joined").await;
    x.wait_message("an offer", T, |m| m["type"] == "offer")
        .await;
    x.send(json!({"type": "join", "version": 1, "room": "other", "name": "X"}));
    expect_error(&x, &mut seen, "already-joined", Some("join")).await;

    // Hostile SDP: each is refused and the offer stays outstanding.
    let bogus_mlines: String = (0..1000)
        .map(|i| format!("m=video {i} UDP/TLS/RTP/SAVPF 96\r\na=mid:{i}\r\n"))
        .collect();
    for sdp in [
        "garbage".to_owned(),
        "v=0\r\n".to_owned(),
        format!("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n{bogus_mlines}"),
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:\r\n"
            .to_owned(),
        "\u{0}\u{1}\u{2}".to_owned(),
    ] {
        x.send(json!({"type": "answer", "sdp": sdp}));
        expect_error(&x, &mut seen, "invalid-sdp", Some("answer")).await;
    }
    let answer = x.answer_offer().await;
    x.send(json!({"type": "answer", "sdp": answer}));
    x.send(json!({"type": "answer", "sdp": answer}));
    expect_error(&x, &mut seen, "no-offer-pending", Some("answer")).await;

    // Unknown ids and bad fields.
    x.send(json!({"type": "unpublish", "track_id": "t999999"}));
    expect_error(&x, &mut seen, "unknown-track", Some("unpublish")).await;
    x.send(json!({"type": "mute", "track_id": "t999999", "muted": true}));
    expect_error(&x, &mut seen, "unknown-track", Some("mute")).await;
    x.send(json!({"type": "mute", "track_id": "p1", "muted": true}));
    expect_error(&x, &mut seen, "invalid-message", Some("mute")).await;
    x.send(json!({"type": "chat", "text": "psst", "to": "p999999"}));
    expect_error(&x, &mut seen, "unknown-participant", Some("chat")).await;
    x.send(json!({"type": "chat", "text": ""}));
    expect_error(&x, &mut seen, "invalid-message", Some("chat")).await;
    x.send(json!({"type": "candidate", "candidate": {"candidate": "candidate:garbage", "sdpMid": "0"}}));
    expect_error(&x, &mut seen, "invalid-candidate", Some("candidate")).await;
    x.send(json!({"type": "publish", "tracks": [{"cid": "mic", "kind": "audio"}]}));
    expect_error(&x, &mut seen, "invalid-message", Some("publish")).await;
    let eight: Vec<_> = (0..8)
        .map(|i| json!({"cid": format!("c{i}"), "kind": "video"}))
        .collect();
    x.send(json!({"type": "publish", "tracks": eight}));
    expect_error(&x, &mut seen, "too-many-tracks", Some("publish")).await;

    // A flood of junk: every message answered, nothing else disturbed.
    for i in 0..300 {
        x.send_text(format!("{{\"type\": \"junk{i}\""));
    }
    wait_for("300 errors for the flood", Duration::from_secs(10), || {
        x.messages_of("error").len() >= seen + 300
    })
    .await;
    seen += 300;

    // Garbage datagrams at the media port.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..2000usize {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = (rng % 1400) as usize + 1;
        let mut d: Vec<u8> = (0..len).map(|j| (rng >> (j % 56)) as u8).collect();
        // Look like STUN, DTLS and RTP in turn, to reach deeper into the demultiplexer.
        d[0] = [0x00, 0x01, 0x16, 0x17, 0x80, 0x90, 0xff][i % 7];
        let _ = udp.send_to(&d, server.udp).await;
    }

    // The session is still usable, and the server still answers.
    x.send(json!({"type": "ping", "id": 8}));
    x.wait_message("pong 8", T, |m| m["type"] == "pong" && m["id"] == 8)
        .await;
    assert_eq!(x.messages_of("error").len(), seen, "no unexplained errors");

    // Ann and Bob never noticed: still two members, media intact and complete.
    for c in [&ann, &bob] {
        let before = c
            .received()
            .values()
            .map(|t| t.packets.len())
            .sum::<usize>();
        wait_for("media to keep flowing", T, || {
            c.received()
                .values()
                .map(|t| t.packets.len())
                .sum::<usize>()
                > before + 50
        })
        .await;
        assert!(
            c.messages_of("participant-left").is_empty() && c.messages_of("error").is_empty(),
            "{} saw nothing of it",
            c.name
        );
    }
    x.leave();
    for c in [&ann, &bob] {
        c.wait_message("Xavier left", T, |m| m["type"] == "participant-left")
            .await;
    }
    let clients = [ann, bob];
    stop_and_verify(&clients, &ids).await;
    common::leave_all(clients).await;
    x.close().await;
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_and_server_limits_are_enforced_with_their_codes() {
    let mut config = test_config();
    config.limits.max_participants_per_room = 2;
    config.limits.max_rooms = 1;
    let server = TestServer::start_with(config).await;
    let url = server.ws_url();
    let a = Client::join(&url, "small", "A", quiet()).await;
    let b = Client::join(&url, "small", "B", quiet()).await;
    a.participant_id().await;
    b.participant_id().await;
    let c = Client::join(&url, "small", "C", quiet()).await;
    let mut seen = 0;
    expect_error(&c, &mut seen, "room-full", Some("join")).await;
    c.send(json!({"type": "join", "version": 1, "room": "another", "name": "C"}));
    expect_error(&c, &mut seen, "too-many-rooms", Some("join")).await;
    // When a place frees up, the same connection can join.
    a.leave();
    b.wait_message("A left", T, |m| m["type"] == "participant-left")
        .await;
    c.send(json!({"type": "join", "version": 1, "room": "small", "name": "C"}));
    c.wait_message("joined", T, |m| m["type"] == "joined").await;
    common::leave_all([a, b, c]).await;
    server.assert_drained().await;
}
