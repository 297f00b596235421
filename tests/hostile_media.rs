//! Hostile datagrams at the media port: forged packets, from the attacker's own address and
//! spoofed as a participant's, never harm a call in progress. Every refused datagram is counted.
//!
//! The spoofed packets go out through a raw socket, which needs root (CAP_NET_RAW): the test
//! suite runs as root inside its own loopback-only network namespace (scripts/test.sh).

mod common;

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use common::verify::stop_and_verify;
use common::{wait_for, Client, ClientOptions, TestServer};

const T: Duration = Duration::from_secs(5);

/// The datagram of issue 11: RTP with a two-byte-header extension (profile 0x1000, one word)
/// whose one element claims 200 bytes. webrtc-rs 0.17 panics parsing it, before SRTP
/// authentication, in the SRTP read loop of whichever connection owns the source address.
const FORGED_EXTENSION: [u8; 20] = [
    0x90, 0x60, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x10, 0x00, 0x00, 0x01,
    0x01, 0xc8, 0x00, 0x00,
];

/// SRTCP shorter than its own header and sender SSRC: an index out of bounds in webrtc-rs's
/// `decrypt_rtcp`, also before authentication.
const SHORT_RTCP: [u8; 5] = [0x80, 0xc8, 0x00, 0x01, 0x00];

/// Other hostile shapes: a one-byte extension element running past the end, CSRCs that are
/// not there, a truncated extension header, and a well-formed but unauthenticated packet.
fn forged_datagrams() -> Vec<Vec<u8>> {
    let mut one_byte_overrun = vec![0x90, 0x6f, 0, 9, 0, 0, 0, 1, 0, 0, 0, 3, 0xbe, 0xde, 0, 1];
    one_byte_overrun.extend_from_slice(&[0x1f, 0, 0, 0, 1, 2]);
    let mut well_formed = vec![0x80, 0x6f, 0, 9, 0, 0, 0, 1, 0, 0, 0, 3];
    well_formed.extend_from_slice(&[0x55; 200]);
    vec![
        FORGED_EXTENSION.to_vec(),
        SHORT_RTCP.to_vec(),
        one_byte_overrun,
        vec![0x8f, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0],
        vec![0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0x10],
        well_formed,
    ]
}

/// Sends `payload` as a UDP datagram from `from` to `to` through a raw IPv4 socket: any source
/// address, as an attacker on the path (or one who spoofs) could.
fn send_spoofed(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
    use socket2::{Domain, Protocol, Socket, Type};
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))
        .expect("a raw socket (the tests run as root in their own network namespace)");
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut packet = Vec::with_capacity(total);
    // IPv4 header: the kernel fills in the checksum (and the id when zero).
    packet.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
    ]);
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&from.ip().octets());
    packet.extend_from_slice(&to.ip().octets());
    // UDP header; a zero checksum means none (RFC 768).
    packet.extend_from_slice(&from.port().to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    raw.send_to(&packet, &SocketAddr::V4(to).into())
        .expect("the raw send");
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("the tests use 127.0.0.1"),
    }
}

/// Packets received so far on each of `c`'s tracks.
fn received_per_track(c: &Client) -> Vec<(String, usize)> {
    let mut v: Vec<_> = c
        .received()
        .into_iter()
        .map(|(id, t)| (id, t.packets.len()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_datagrams_from_anyone_are_refused_and_the_call_goes_on() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let (ann, bob, ids) = common::call_of_two(&url, "call").await;
    let rejected = |reason: &str| server.counter("rejected_datagrams", &[reason]);
    assert_eq!(rejected("malformed_rtp"), 0, "a clean call has none");

    // From the attacker's own address, then spoofed as each participant (the address the
    // server's SRTP sessions know them by), a few times over.
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let datagrams = forged_datagrams();
    for _ in 0..5 {
        for d in &datagrams {
            attacker.send_to(d, server.udp).await.unwrap();
            for victim in [&ann, &bob] {
                send_spoofed(v4(victim.media_addr), v4(server.udp), d);
            }
        }
    }
    // 4 malformed RTP shapes and 1 malformed RTCP, 5 rounds, 3 sources each.
    wait_for(
        "every forged datagram to be refused and counted",
        Duration::from_secs(5),
        || rejected("malformed_rtp") == 4 * 5 * 3 && rejected("malformed_rtcp") == 5 * 3,
    )
    .await;

    // Both still publish and receive: each one's SRTP read loop is alive.
    for c in [&ann, &bob] {
        let before = received_per_track(c);
        assert_eq!(
            before.len(),
            2,
            "{} receives the other's audio and video",
            c.name
        );
        wait_for(
            "every track to keep flowing after the forged datagrams",
            Duration::from_secs(5),
            || {
                let now = received_per_track(c);
                now.len() == 2 && now.iter().zip(&before).all(|(n, b)| n.1 >= b.1 + 20)
            },
        )
        .await;
        assert!(
            c.messages_of("participant-left").is_empty(),
            "{} lost nobody",
            c.name
        );
    }
    let clients = [ann, bob];
    stop_and_verify(&clients, &ids).await;
    common::leave_all(clients).await;
    server.assert_drained().await;
}

/// Every answer is either applied whole or refused with the session able to negotiate: the
/// answers that wedged webrtc-rs (a payload type without `a=rtpmap`, a garbled rtpmap, a
/// payload type that is not a number) and the one that silently carried nothing (every m-line
/// `inactive`) are refused with `invalid-sdp`, and the real answer then publishes, while a call
/// in progress stays complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_wedged_the_stack_are_refused_and_the_session_still_publishes() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let (ann, bob, ids) = common::call_of_two(&url, "call").await;
    let xena = Client::join(
        &url,
        "call",
        "Xena",
        ClientOptions {
            auto_answer: false,
            ..ClientOptions::default()
        },
    )
    .await;
    xena.wait_message("an offer", T, |m| m["type"] == "offer")
        .await;
    let good = xena.answer_offer().await;
    let audio_mline = good
        .lines()
        .find(|l| l.starts_with("m=audio"))
        .expect("an audio m-line")
        .to_owned();
    let directions = ["a=sendonly", "a=recvonly", "a=sendrecv"];
    let all_inactive = good
        .split("\r\n")
        .map(|l| {
            if directions.contains(&l) {
                "a=inactive"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    let bad = [
        (
            "a payload type without a=rtpmap",
            good.replace("a=rtpmap:0 PCMU/8000\r\n", "")
                .replace(&audio_mline, &format!("{audio_mline} 0")),
        ),
        (
            "a garbled rtpmap",
            good.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus"),
        ),
        (
            "a payload type that is not a number",
            good.replace(&audio_mline, &audio_mline.replacen(" 111", " 111x", 1)),
        ),
        ("every m-line inactive", all_inactive),
    ];
    let mut seen = 0;
    for (what, sdp) in bad {
        assert_ne!(sdp, good, "{what}: the answer was changed");
        xena.send(serde_json::json!({"type": "answer", "sdp": sdp}));
        let e = xena.wait_error(seen, T).await;
        seen += 1;
        assert_eq!(e["code"], "invalid-sdp", "{what}: {e}");
    }
    // The offer is still outstanding, and the real answer publishes.
    xena.send(serde_json::json!({"type": "answer", "sdp": good}));
    for c in [&ann, &bob] {
        wait_for(
            "Xena's audio and video to reach the others after the refused answers",
            Duration::from_secs(15),
            || c.flowing_tracks(20) == 4,
        )
        .await;
    }
    assert_eq!(xena.messages_of("error").len(), seen, "no other error");
    let mut ids = ids;
    ids.push(xena.participant_id().await);
    let clients = [ann, bob, xena];
    stop_and_verify(&clients, &ids).await;
    common::leave_all(clients).await;
    server.assert_drained().await;
}

/// A publisher whose media stops while its connection stays up (a dead receive path, a stuck
/// client) is told `media-timeout` and removed, rather than stay in the room as a zombie; the
/// others see it leave and their call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_whose_media_stops_is_told_and_removed() {
    let mut config = common::test_config();
    config.timeouts.media_silence_ms = 1500;
    let server = TestServer::start_with(config).await;
    let url = server.ws_url();
    let (ann, bob, _) = common::call_of_two(&url, "call").await;
    let carl = Client::join(&url, "call", "Carl", ClientOptions::default()).await;
    for c in [&ann, &bob, &carl] {
        wait_for("the call of three to flow", Duration::from_secs(15), || {
            c.flowing_tracks(20) == 4
        })
        .await;
    }
    // Ann's connection stays up (ICE keeps answering), but no RTP leaves her any more.
    ann.stop_media();
    let e = ann.wait_error(0, Duration::from_secs(5)).await;
    assert_eq!(e["code"], "media-timeout", "{e}");
    for c in [&bob, &carl] {
        c.wait_message("Ann removed", T, |m| m["type"] == "participant-left")
            .await;
        let before = c.received_count();
        wait_for("the others' call to go on", T, || {
            c.received_count() > before + 50
        })
        .await;
    }
    assert!(
        bob.messages_of("error").is_empty() && carl.messages_of("error").is_empty(),
        "only Ann was told"
    );
    ann.close().await;
    common::leave_all([bob, carl]).await;
    server.assert_drained().await;
}

/// A STUN binding request to the server, as the ICE peer `ufrag` is the server's: webrtc-rs's
/// UDP mux hands it to that connection by the USERNAME, whatever address it comes from.
fn stun_request_for(ufrag: &str, n: u32) -> Vec<u8> {
    use webrtc::stun::agent::TransactionId;
    use webrtc::stun::attributes::ATTR_USERNAME;
    use webrtc::stun::message::{Message, BINDING_REQUEST};
    use webrtc::stun::textattrs::Username;
    let mut m = Message::new();
    m.build(&[
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(Username::new(ATTR_USERNAME, format!("{ufrag}:flood{n}"))),
    ])
    .expect("a STUN message builds");
    m.raw
}

/// STUN carrying the username fragment of a connection whose offer is not answered yet was
/// buffered for that connection until the buffer filled, then logged as an ERROR line per
/// packet (70 MB of log in under three minutes). Now every call site writes at most a few
/// lines per interval and counts the rest, the server's memory stays bounded, and a call in
/// progress loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_flood_for_a_waiting_connection_is_counted_not_logged_per_packet() {
    let server = common::process::PlazaProcess::start(&[]);
    let url = server.ws_url();
    let (ann, bob, ids) = common::call_of_two(&url, "call").await;
    let waiting = Client::join(
        &url,
        "elsewhere",
        "Wes",
        ClientOptions {
            auto_answer: false,
            ..ClientOptions::default()
        },
    )
    .await;
    let offer = waiting
        .wait_message("an offer", T, |m| m["type"] == "offer")
        .await;
    let ufrag = offer["sdp"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("the offer has a ufrag")
        .trim()
        .to_owned();
    let (lines_before, rss_before) = (server.log_lines(), server.rss_kib());
    let suppressed_before = server.metric("plaza_log_lines_suppressed_total").await;

    // 100,000 requests from 16 source ports.
    const FLOOD: u32 = 100_000;
    let mut sources = Vec::new();
    for _ in 0..16 {
        sources.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    for n in 0..FLOOD {
        let request = stun_request_for(&ufrag, n);
        let _ = sources[n as usize % sources.len()]
            .send_to(&request, server.udp)
            .await;
        if n % 1000 == 999 {
            // Let the server's receive loop keep up rather than measure the kernel's drops.
            tokio::task::yield_now().await;
        }
    }
    // The rate limit reports what it left out once per interval; wait for that report.
    common::wait_for_async(
        "the server to count log lines it left out",
        Duration::from_secs(15),
        || async { server.metric("plaza_log_lines_suppressed_total").await > suppressed_before },
    )
    .await;
    let logged = server.log_lines() - lines_before;
    let rss_growth = server.rss_kib().saturating_sub(rss_before);
    println!(
        "{FLOOD} STUN requests: {logged} log lines, RSS +{rss_growth} KiB, {} lines left out",
        server.metric("plaza_log_lines_suppressed_total").await - suppressed_before
    );
    assert!(
        logged <= 40,
        "{logged} log lines for {FLOOD} STUN requests; the last: {:#?}",
        server.log_tail()
    );
    assert!(
        rss_growth < 32 * 1024,
        "the server's RSS grew by {rss_growth} KiB during the flood"
    );

    // The call went on, complete.
    for c in [&ann, &bob] {
        assert!(
            c.messages_of("participant-left").is_empty(),
            "{} lost nobody",
            c.name
        );
    }
    let clients = [ann, bob];
    stop_and_verify(&clients, &ids).await;
    common::leave_all(clients).await;
    waiting.close().await;
}
