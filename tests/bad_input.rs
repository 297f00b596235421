//! Bad input from one client gets a clear error with a stable code, the session goes on, and a
//! call in progress in the same room never notices: malformed and oversized messages, unknown
//! types and ids, messages out of order, hostile SDP and candidates, floods, garbage UDP,
//! ids in non-canonical spellings, hidden characters in names and chat, binary floods, and a
//! client that never reads what the server sends it.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::verify::stop_and_verify;
use common::{test_config, wait_for, Client, ClientOptions, TestServer};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

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

/// Waits until Ann and Bob both receive both of each other's tracks.
async fn call_flowing(clients: &[&Client]) {
    for c in clients {
        wait_for(
            &format!("{}'s call to flow", c.name),
            Duration::from_secs(15),
            || c.flowing_tracks(20) == 2,
        )
        .await;
    }
}

/// Asserts that media is still arriving at each client (50 more packets within `T`).
async fn media_keeps_flowing(clients: &[&Client]) {
    for c in clients {
        let before = c.received_count();
        wait_for(&format!("{}'s media to keep flowing", c.name), T, || {
            c.received_count() > before + 50
        })
        .await;
    }
}

/// Opens a WebSocket whose TCP receive buffer is tiny, joins `room` as `name` and returns the
/// socket unread: a client that never reads its messages, whose server side backs up fast.
async fn join_and_never_read(
    http: SocketAddr,
    room: &str,
    name: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(http).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{http}/ws"), stream)
        .await
        .expect("websocket handshake");
    let join = json!({"type": "join", "version": 1, "room": room, "name": name});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_and_the_call_goes_on() {
    let mut config = test_config();
    // The room's queue overflows first (about half a second after Zed's socket stops taking
    // data, at the rate below); the write timeout, tested on its own below, is the backstop
    // that ends the stuck session after that.
    config.timeouts.session_write_ms = 3000;
    config.limits.max_messages_per_second = 2000;
    let server = TestServer::start_with(config).await;
    let url = server.ws_url();
    let ann = Client::join(&url, "call", "Ann", ClientOptions::default()).await;
    let bob = Client::join(&url, "call", "Bob", ClientOptions::default()).await;
    let ids = vec![ann.participant_id().await, bob.participant_id().await];
    call_flowing(&[&ann, &bob]).await;
    let chatter = Client::join(&url, "call", "Chatty", quiet()).await;
    chatter.participant_id().await;

    let mut zed = join_and_never_read(server.http, "call", "Zed").await;
    let joined = chatter
        .wait_message("Zed to join", T, |m| {
            m["type"] == "participant-joined" && m["participant"]["name"] == "Zed"
        })
        .await;
    let zed_id = joined["participant"]["id"].as_str().unwrap().to_owned();

    // Private chats to Zed at the rate limit: 8 MB/s that Zed never takes. Without bounds the
    // server would hold all of it (its room queue and its socket buffers only grow).
    let started = Instant::now();
    let flood = {
        let text = "z".repeat(4000);
        let chats: Vec<String> = (0..200)
            .map(|_| json!({"type": "chat", "text": text, "to": zed_id}).to_string())
            .collect();
        let out = chatter.sender();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                for c in &chats {
                    if out.send(Message::Text(c.clone().into())).is_err() {
                        return;
                    }
                }
            }
        })
    };
    let left = |c: &Client| {
        c.messages_of("participant-left")
            .into_iter()
            .find(|m| m["participant_id"] == zed_id.as_str())
    };
    wait_for(
        "the server to disconnect the client that never reads",
        Duration::from_secs(15),
        || left(&ann).is_some(),
    )
    .await;
    flood.abort();
    let took = started.elapsed();
    assert_eq!(left(&ann).unwrap()["reason"], "timed-out");
    let metric = |reason| server.counter("slow_client_disconnects", &[reason]);
    assert_eq!(
        (metric("event_queue_full"), metric("write_timeout")),
        (1, 0),
        "the room removed Zed for its full queue, and counted it once"
    );
    // What the server had for Zed is gone: its session task, its membership, its peer.
    wait_for("the server to release Zed's session", T, || {
        server
            .state
            .metrics
            .tasks
            .with_label_values(&["session"])
            .get()
            == 3
            && server.gauge("participants") == 3
            && server.gauge("peer_connections") == 3
    })
    .await;
    eprintln!(
        "non-reader disconnected after {took:?} of flooding (queue full: {}, write timeout: {})",
        metric("event_queue_full"),
        metric("write_timeout")
    );

    // Zed's socket ends: with close code 1008 "too-slow" when the close frame got through
    // (when the socket was still stuck, the server just drops the connection).
    let ended = tokio::time::timeout(T, async {
        while let Some(frame) = zed.next().await {
            match frame {
                Ok(Message::Close(Some(close))) => return Some(close),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("Zed's socket to end within 5 s after the disconnect");
    if let Some(close) = ended {
        assert_eq!(close.code, CloseCode::Policy);
        assert!(close.reason.starts_with("too-slow"), "{}", close.reason);
    }

    // The call never noticed: media on, complete and in order, nobody else left.
    media_keeps_flowing(&[&ann, &bob]).await;
    for c in [&ann, &bob] {
        let lefts = c.messages_of("participant-left");
        assert_eq!(lefts.len(), 1, "{} saw only Zed leave: {lefts:?}", c.name);
    }
    let clients = [ann, bob];
    stop_and_verify(&clients, &ids).await;
    common::leave_all(clients).await;
    common::leave_all([chatter]).await;
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_errors_is_disconnected_before_joining() {
    let mut config = test_config();
    config.timeouts.session_write_ms = 500;
    config.limits.max_messages_per_second = 100_000;
    let server = TestServer::start_with(config).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.http).await.unwrap();
    let url = format!("ws://{}/ws", server.http);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    // Junk whose errors (each quoting a long unknown type) this client never reads.
    let junk = json!({"type": "x".repeat(60), "pad": "y".repeat(1000)}).to_string();
    let started = Instant::now();
    let mut sent = 0;
    while server.counter("slow_client_disconnects", &["write_timeout"]) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out after 15 s waiting for the server to give up on a client that never \
             reads ({sent} messages sent)"
        );
        // The server stops reading too once it stops; a failed send is the socket closing.
        let send = tokio::time::timeout(
            Duration::from_millis(100),
            ws.send(Message::Text(junk.clone().into())),
        );
        match send.await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => break,
            Err(_) => {} // our own send buffer is full: the server is not reading either
        }
    }
    wait_for("the session to end", T, || {
        server
            .state
            .metrics
            .tasks
            .with_label_values(&["session"])
            .get()
            == 0
    })
    .await;
    assert_eq!(
        server.counter("slow_client_disconnects", &["write_timeout"]),
        1
    );
    drop(ws);
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_count_against_the_rate_limit() {
    let mut config = test_config();
    config.limits.max_messages_per_second = 10; // a burst of 40
    let server = TestServer::start_with(config).await;
    let x = Client::connect(&server.ws_url(), "X", &quiet()).await;
    for _ in 0..100 {
        x.send_binary(vec![0xde, 0xad]);
    }
    wait_for("an error for each of 100 binary frames", T, || {
        x.messages_of("error").len() >= 100
    })
    .await;
    let codes: Vec<String> = x
        .messages_of("error")
        .iter()
        .map(|e| e["code"].as_str().unwrap().to_owned())
        .collect();
    let limited = codes.iter().filter(|c| *c == "rate-limited").count();
    let malformed = codes.iter().filter(|c| *c == "malformed-message").count();
    assert_eq!(limited + malformed, 100, "{codes:?}");
    // The burst is 40, plus what refills while the frames arrive (10 per second).
    assert!(
        (40..=50).contains(&malformed) && limited >= 50,
        "{malformed} binary frames went through the limit, {limited} were limited"
    );
    x.close().await;
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_ids_and_hidden_characters_are_invalid_messages() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let ann = Client::join(&url, "call", "Ann", ClientOptions::default()).await;
    let bob = Client::join(&url, "call", "Bob", ClientOptions::default()).await;
    let ids = vec![ann.participant_id().await, bob.participant_id().await];
    call_flowing(&[&ann, &bob]).await;
    let ann_n = ids[0].strip_prefix('p').unwrap().to_owned();

    let x = Client::connect(&url, "Xavier", &quiet()).await;
    let mut seen = 0;
    // Names and room names with hidden characters: refused, naming the field.
    for (field, c) in [
        ("name", '\u{202E}'),
        ("name", '\u{2066}'),
        ("name", '\u{200F}'),
        ("name", '\u{061C}'),
        ("name", '\u{200B}'),
        ("name", '\u{200D}'),
        ("name", '\u{2060}'),
        ("name", '\u{FEFF}'),
        ("name", '\u{AD}'),
        ("name", '\u{2028}'),
        ("name", '\n'),
        ("room", '\u{202E}'),
        ("room", '\u{200B}'),
        ("room", '\r'),
    ] {
        let (room, name) = match field {
            "name" => ("call".to_owned(), format!("An{c}n")),
            _ => (format!("ca{c}ll"), "Xavier".to_owned()),
        };
        x.send(json!({"type": "join", "version": 1, "room": room, "name": name}));
        let e = x.wait_error(seen, T).await;
        seen += 1;
        assert_eq!(
            (e["code"].as_str(), e["request"].as_str()),
            (Some("invalid-message"), Some("join")),
            "{field} with U+{:04X}: {e}",
            c as u32
        );
        let message = e["message"].as_str().unwrap();
        assert!(
            message.starts_with(field) && message.contains(&format!("U+{:04X}", c as u32)),
            "the error names the field and the character: {message}"
        );
    }
    x.send(json!({"type": "join", "version": 1, "room": "call", "name": "Xavier"}));
    x.wait_message("joined", T, |m| m["type"] == "joined").await;

    // Ids in any spelling but the canonical one are not ids: `p+1` must not reach p1.
    for to in [
        format!("p+{ann_n}"),
        format!("p0{ann_n}"),
        format!("p {ann_n}"),
        format!("p{ann_n} "),
        format!(" p{ann_n}"),
        "p0".to_owned(),
        "p-1".to_owned(),
        "p18446744073709551616".to_owned(),
    ] {
        x.send(json!({"type": "chat", "text": "psst", "to": to}));
        expect_error(&x, &mut seen, "invalid-message", Some("chat")).await;
    }
    for track in ["t0", "t+5", "t007", "t99999999999999999999"] {
        x.send(json!({"type": "mute", "track_id": track, "muted": true}));
        expect_error(&x, &mut seen, "invalid-message", Some("mute")).await;
        x.send(json!({"type": "unpublish", "track_id": track}));
        expect_error(&x, &mut seen, "invalid-message", Some("unpublish")).await;
    }

    // Chat: control, bidi and zero-width characters are refused; a line break is kept and
    // arrives as one message under its author.
    for text in [
        "ok\rAnn: fake",
        "\u{202E}olleh",
        "hi\u{200B}",
        "tab\there",
        "line\u{2028}break",
    ] {
        x.send(json!({"type": "chat", "text": text}));
        let e = x.wait_error(seen, T).await;
        seen += 1;
        assert_eq!(e["code"], "invalid-message", "{text:?}: {e}");
        assert!(
            e["message"].as_str().unwrap().starts_with("chat text"),
            "{e}"
        );
    }
    let multiline = "first line\nAnn: this line is Xavier's too\n👩\u{200D}💻";
    x.send(json!({"type": "chat", "text": multiline}));
    let chat = ann
        .wait_message("Xavier's chat", T, |m| m["type"] == "chat")
        .await;
    assert_eq!(chat["text"], multiline);
    assert_eq!(chat["name"], "Xavier");
    assert_eq!(
        ann.messages_of("chat").len(),
        1,
        "no other chat reached Ann"
    );
    assert!(bob.messages_of("chat").len() <= 1);
    x.send(json!({"type": "ping", "id": 9}));
    x.wait_message("pong 9", T, |m| m["type"] == "pong" && m["id"] == 9)
        .await;
    assert_eq!(x.messages_of("error").len(), seen, "no unexplained errors");

    media_keeps_flowing(&[&ann, &bob]).await;
    let clients = [ann, bob];
    stop_and_verify(&clients, &ids).await;
    common::leave_all(clients).await;
    common::leave_all([x]).await;
    server.assert_drained().await;
}
