//! Fuzz targets for what arrives on the media port and what the forwarding core is fed, run
//! like tests/fuzz.rs (same fuzzer, budget `PLAZA_FUZZ_ITERATIONS`, seed `PLAZA_FUZZ_SEED`;
//! see docs/fuzzing.md):
//! - `datagram_guard`: any datagram either is refused by Plaza's guard or goes through every
//!   read webrtc-rs makes of it before authentication (RTP header and packet, the SRTCP header,
//!   SSRC and index, STUN) without a panic;
//! - `answer_rules`: the answer check never panics, on any text;
//! - `answers_against_a_live_offer`: mutated answers applied to a real offer of the engine:
//!   after every one, the connection can still negotiate (an offer can be created and answered);
//! - `forwarding_core`: the router, fed packets with any header fields and payload, keyframe
//!   requests, consumers coming and going and time moving, never panics, and what it sends each
//!   consumer has continuous sequence numbers.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mutate::{self, Mutator, Rng};
use plaza::forward::{
    Codec, MediaKind, Output, ParticipantId, Router, RouterConfig, RtpPacket, TrackId,
};
use webrtc::util::marshal::Unmarshal;

const DEFAULT_ITERATIONS: u64 = 200_000;

fn rtp(ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x80, 0x60, 0x12, 0x34, 0, 0, 0x10, 0, 0xde, 0xad, 0xbe, 0xef,
    ];
    if !ext.is_empty() {
        p[0] |= 0x10;
        p.extend_from_slice(ext);
    }
    p.extend_from_slice(payload);
    p
}

fn datagram_seeds() -> Vec<Vec<u8>> {
    vec![
        // RTP: plain, one-byte extensions (mid, abs-send-time), two-byte, CSRCs, padding.
        rtp(&[], &[0x90, 0x80, 0x80, 0x10, 0x9d, 0x01, 0x2a, 0, 0, 0, 0]),
        rtp(
            &[0xbe, 0xde, 0, 2, 0x10, b'0', 0x32, 1, 2, 3, 0, 0],
            &[1; 40],
        ),
        rtp(&[0x10, 0x00, 0, 1, 0x01, 0x02, 7, 7], &[2; 20]),
        {
            let mut p = rtp(&[], &[3; 10]);
            p[0] |= 0x22; // padding, two CSRCs
            p.splice(12..12, [0u8; 8]);
            p.push(4);
            p
        },
        // The forged packet of issue 11.
        rtp(&[0x10, 0x00, 0x00, 0x01, 0x01, 0xc8, 0, 0], &[]),
        // RTCP: a sender report with one report block and an SRTCP-like trailer, RR + PLI.
        {
            let mut p = vec![0x81, 200, 0, 12, 0, 0, 0, 1];
            p.extend_from_slice(&[0x11; 20]);
            p.extend_from_slice(&[
                0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0x10, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            p.extend_from_slice(&[
                0x80, 0, 0, 1, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa,
            ]);
            p
        },
        vec![
            0x80, 201, 0, 1, 0, 0, 0, 1, 0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0x80, 0, 0, 1, 1,
            2, 3, 4, 5, 6,
        ],
        // NACK and transport-cc feedback.
        vec![
            0x81, 205, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0x12, 0x34, 0x00, 0x05,
        ],
        vec![
            0x8f, 205, 0, 5, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, 0, 3, 0, 0, 1, 0, 0x20, 3, 1, 1, 1, 0,
            0, 0,
        ],
        // STUN binding request with USERNAME, and a DTLS record header.
        {
            let mut p = vec![0, 1, 0, 12, 0x21, 0x12, 0xa4, 0x42];
            p.extend_from_slice(&[7; 12]);
            p.extend_from_slice(&[0, 6, 0, 8]);
            p.extend_from_slice(b"abcd:efg");
            p
        },
        vec![
            22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 1, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2,
            3, 4,
        ],
    ]
}

/// What webrtc-rs does with a datagram the guard lets through must not panic.
fn check_datagram(d: &[u8]) {
    let Ok(()) = plaza::rtc::admit_datagram(d) else {
        return;
    };
    match d[0] {
        0..=3 => {
            let mut m = webrtc::stun::message::Message::new();
            let _ = m.unmarshal_binary(d);
        }
        128..=191 if (64..=95).contains(&(d[1] & 0x7f)) => {
            // Before authentication webrtc-rs reads the SRTCP header, the sender SSRC and the
            // index at the end; the rest is encrypted, so it is parsed only once authentic
            // (docs/fuzzing.md has what its RTCP parser does with a participant's own bad
            // packets).
            let _ = webrtc::rtcp::header::Header::unmarshal(&mut &d[..]);
            let index_at = d.len() - 4;
            let _ = (u32::from_be_bytes([d[4], d[5], d[6], d[7]]), &d[index_at..]);
        }
        128..=191 => {
            let _ = webrtc::rtp::header::Header::unmarshal(&mut &d[..]);
            let _ = webrtc::rtp::packet::Packet::unmarshal(&mut &d[..]);
        }
        _ => {}
    }
}

#[test]
fn fuzz_datagram_guard() {
    let mut mutator = Mutator::new(mutate::seed(), &["\u{80}", "\u{90}", "\u{be}\u{de}"], 1500);
    mutate::run(
        "datagram_guard",
        &datagram_seeds(),
        &mut mutator,
        mutate::iterations(DEFAULT_ITERATIONS),
        Mutator::mutate_bytes,
        &check_datagram,
    );
}

/// A browser-shaped offer and answer: audio the client publishes, video it receives, a stopped
/// m-line.
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n\
a=fingerprint:sha-256 AA:BB\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\n\
a=recvonly\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=inactive\r\na=rtpmap:96 VP8/90000\r\n";

const ANSWER: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n\
a=fingerprint:sha-256 CC:DD\r\na=ice-ufrag:x\r\na=ice-pwd:yyyyyyyyyyyyyyyyyyyyyy\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 98\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:98 VP9/90000\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=inactive\r\n";

const SDP_DICTIONARY: &[&str] = &[
    "\r\n",
    "a=",
    "m=",
    "rtpmap:",
    "sendonly",
    "recvonly",
    "inactive",
    "sendrecv",
    "mid:",
    "opus/48000/2",
    "VP8/90000",
    " 0 ",
    "111",
    "96",
    "ice-ufrag:",
    "fingerprint:",
    "/",
    ":",
];

#[test]
fn fuzz_answer_rules() {
    let seeds = vec![ANSWER.as_bytes().to_vec(), OFFER.as_bytes().to_vec()];
    let mut mutator = Mutator::new(mutate::seed(), SDP_DICTIONARY, 8 * 1024);
    mutate::run(
        "answer_rules",
        &seeds,
        &mut mutator,
        mutate::iterations(DEFAULT_ITERATIONS),
        Mutator::mutate_bytes,
        &|input| {
            let _ = plaza::rtc::check_answer(OFFER, &String::from_utf8_lossy(input));
        },
    );
}

/// Router inputs decoded from bytes: the fuzzer's bytes become a script of packets, keyframe
/// requests, consumers joining and leaving, and time passing.
fn run_router_script(script: &[u8]) {
    let start = Instant::now();
    let mut router = Router::new(RouterConfig::default());
    let publisher = ParticipantId(1);
    let tracks = [
        (TrackId(10), MediaKind::Video, Codec::Vp8, 90_000),
        (TrackId(11), MediaKind::Video, Codec::H264, 90_000),
        (TrackId(12), MediaKind::Video, Codec::Av1, 90_000),
        (TrackId(13), MediaKind::Video, Codec::Vp9, 90_000),
        (TrackId(14), MediaKind::Audio, Codec::Opus, 48_000),
    ];
    for (t, kind, codec, clock) in tracks {
        router.add_producer(t, publisher, kind, codec, clock);
    }
    let mut now = start;
    // Per track: its current source and how many times the source changed (each change
    // rebases every consumer). Per consumer and track: the epoch and sequence offset of the
    // last packet forwarded.
    let mut sources: HashMap<TrackId, (u32, u64)> = HashMap::new();
    let mut offsets: HashMap<(ParticipantId, TrackId), (u64, u16)> = HashMap::new();
    let mut bytes = script.iter().copied();
    let mut next = || bytes.next();
    while let Some(op) = next() {
        let track = tracks[(op as usize >> 3) % tracks.len()].0;
        let subscriber = ParticipantId(2 + (op as u64 >> 6));
        let mut fed = None;
        match op & 7 {
            0..=3 => {
                let mut header = [0u8; 8];
                for b in header.iter_mut() {
                    *b = next().unwrap_or(0);
                }
                let len = next().unwrap_or(0) as usize % 64;
                let payload: Vec<u8> = (0..len).map(|_| next().unwrap_or(0)).collect();
                let packet = RtpPacket {
                    payload_type: header[0] & 0x7f,
                    sequence_number: u16::from_be_bytes([header[1], header[2]]),
                    timestamp: u32::from_be_bytes([header[3], header[4], header[5], header[6]]),
                    ssrc: 1000 + (header[7] & 3) as u32,
                    marker: header[0] & 0x80 != 0,
                    payload: Bytes::from(payload),
                };
                let source = sources.entry(track).or_insert((packet.ssrc, 0));
                if source.0 != packet.ssrc {
                    *source = (packet.ssrc, source.1 + 1);
                }
                fed = Some((source.1, packet.sequence_number));
                router.handle_rtp(track, packet, now);
            }
            4 => {
                // A new consumer, or one ready again (renegotiated): numbered anew.
                router.add_consumer(subscriber, track);
                router.handle_consumer_ready(subscriber, track, now);
                offsets.remove(&(subscriber, track));
            }
            5 => router.remove_consumer(subscriber, track),
            6 => router.handle_keyframe_request(subscriber, track, now),
            _ => {
                now += Duration::from_millis(next().unwrap_or(0) as u64 * 8);
                router.handle_timeout(now);
            }
        }
        while let Some(out) = router.poll_output() {
            let Output::Rtp {
                subscriber,
                track,
                packet,
                ..
            } = out
            else {
                continue;
            };
            let (ssrc, seq) = fed.expect("a packet goes out only for a packet that came in");
            // Within one source, each consumer's sequence numbers keep the publisher's spacing
            // (a gap stays a gap the subscriber can ask to repair, an order stays an order).
            let offset = packet.sequence_number.wrapping_sub(seq);
            if let Some((last_ssrc, last_offset)) =
                offsets.insert((subscriber, track), (ssrc, offset))
            {
                assert!(
                    last_ssrc != ssrc || last_offset == offset,
                    "consumer {subscriber} of {track}: the offset of source {ssrc} moved from \
                     {last_offset} to {offset}"
                );
            }
        }
        let _ = router.take_drops().count();
    }
}

#[test]
fn fuzz_forwarding_core() {
    let mut rng = Rng::new(mutate::seed());
    let seeds: Vec<Vec<u8>> = (0..8)
        .map(|_| (0..400).map(|_| rng.next_u64() as u8).collect())
        .collect();
    let mut mutator = Mutator::new(mutate::seed(), &[], 4096);
    mutate::run(
        "forwarding_core",
        &seeds,
        &mut mutator,
        mutate::iterations(DEFAULT_ITERATIONS),
        Mutator::mutate_bytes,
        &run_router_script,
    );
}

/// A live offer from the real engine and an answer to it from a real webrtc-rs peer; then
/// mutated answers, one after another, each applied to whatever offer is outstanding. After
/// every one: a refused answer left the offer outstanding or the server can make a new one,
/// and an applied one can be followed by a new offer; the untouched answer still applies.
#[tokio::test(flavor = "current_thread")]
async fn fuzz_answers_against_a_live_offer() {
    let config = common::test_config();
    let metrics = plaza::metrics::Metrics::new();
    let engine = plaza::rtc::RtcEngine::bind(&config, metrics).expect("a media socket");
    let (events, _events_rx) = tokio::sync::mpsc::unbounded_channel();
    let peer = engine
        .new_peer(events, tokio::runtime::Handle::current())
        .await
        .expect("a peer");
    peer.add_incoming(MediaKind::Audio, false).await.unwrap();
    peer.add_incoming(MediaKind::Video, false).await.unwrap();
    let offer = peer.create_offer().await.expect("the first offer");
    let first_mlines = mlines(&offer);
    let answer = client_answer(&offer).await;

    let budget = (mutate::iterations(DEFAULT_ITERATIONS) / 200).max(200);
    let mut mutator = Mutator::new(mutate::seed(), SDP_DICTIONARY, 16 * 1024);
    let seeds = [answer.clone().into_bytes()];
    let mut rng = Rng::new(mutate::seed());
    let mut current = answer.clone().into_bytes();
    let (mut applied, mut refused) = (0u64, 0u64);
    let started = Instant::now();
    for i in 0..budget {
        if rng.chance(4) {
            current = seeds[0].clone();
        }
        let input = mutator.mutate_bytes(&current, &seeds[0]);
        let text = String::from_utf8_lossy(&input).into_owned();
        match peer.apply_answer(text).await {
            Ok(()) => applied += 1,
            Err(_) => refused += 1,
        }
        if !peer.awaiting_answer() {
            match peer.create_offer().await {
                Ok(next) => assert_eq!(
                    mlines(&next),
                    first_mlines,
                    "iteration {i}: a later offer must keep the m-lines' order, kinds and mids \
                     (JSEP; browsers refuse it otherwise), after answer:\n{}",
                    String::from_utf8_lossy(&input)
                ),
                Err(e) => panic!(
                    "iteration {i}: the connection cannot offer any more ({e}) after answer:\n{}",
                    String::from_utf8_lossy(&input)
                ),
            }
        }
        current = input;
    }
    // The real answer still applies to the offer outstanding now.
    peer.apply_answer(answer)
        .await
        .expect("the untouched answer applies at the end");
    eprintln!(
        "answers_against_a_live_offer: {budget} answers ({applied} applied, {refused} refused) in {:?}",
        started.elapsed()
    );
    peer.close().await;
    engine.close().await;
}

/// Each m-line's kind and mid, in order.
fn mlines(sdp: &str) -> Vec<(String, Option<String>)> {
    let parsed = webrtc::sdp::description::session::SessionDescription::unmarshal(
        &mut std::io::Cursor::new(sdp),
    )
    .expect("the server's offer parses");
    parsed
        .media_descriptions
        .iter()
        .map(|m| {
            let mid = m.attribute("mid").flatten().map(str::to_owned);
            (m.media_name.media.clone(), mid)
        })
        .collect()
}

/// What a real webrtc-rs client answers to `offer`, publishing audio and video (§6.3 of the
/// protocol: tracks added before the offer is applied).
async fn client_answer(offer: &str) -> String {
    use webrtc::api::media_engine::MediaEngine;
    use webrtc::api::APIBuilder;
    use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
    use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
    use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let api = APIBuilder::new().with_media_engine(media).build();
    let pc = api.new_peer_connection(Default::default()).await.unwrap();
    for mime in ["audio/opus", "video/VP8"] {
        let track = std::sync::Arc::new(TrackLocalStaticRTP::new(
            RTCRtpCodecCapability {
                mime_type: mime.into(),
                ..Default::default()
            },
            mime.into(),
            "fuzz".into(),
        ));
        pc.add_track(track).await.unwrap();
    }
    pc.set_remote_description(RTCSessionDescription::offer(offer.to_owned()).unwrap())
        .await
        .unwrap();
    let answer = pc.create_answer(None).await.unwrap();
    let _ = pc.close().await;
    answer.sdp
}
