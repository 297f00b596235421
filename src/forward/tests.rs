//! Unit tests of the router with virtual time: fan-out, consumer readiness, keyframe gating and
//! request throttling, source switches.

use super::*;
use bytes::Bytes;

const PUB: ParticipantId = ParticipantId(1);
const SUB_A: ParticipantId = ParticipantId(2);
const SUB_B: ParticipantId = ParticipantId(3);
const VIDEO: TrackId = TrackId(10);
const AUDIO: TrackId = TrackId(11);

const VP8_KEY: &[u8] = &[0x10, 0x00, 0x9d];
const VP8_DELTA: &[u8] = &[0x10, 0x01, 0x00];
const VP8_CONT: &[u8] = &[0x00, 0x00, 0x00];

fn packet(ssrc: u32, seq: u16, ts: u32, payload: &'static [u8]) -> RtpPacket {
    RtpPacket {
        payload_type: 96,
        sequence_number: seq,
        timestamp: ts,
        ssrc,
        marker: false,
        payload: Bytes::from_static(payload),
    }
}

fn router() -> Router {
    let mut r = Router::new(RouterConfig {
        keyframe_request_interval: Duration::from_millis(500),
    });
    r.add_producer(VIDEO, PUB, MediaKind::Video, Codec::Vp8, 90_000);
    r.add_producer(AUDIO, PUB, MediaKind::Audio, Codec::Opus, 48_000);
    r
}

fn drain(r: &mut Router) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn rtp_for(outputs: &[Output], who: ParticipantId) -> Vec<(u16, u32)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Rtp {
                subscriber, packet, ..
            } if *subscriber == who => Some((packet.sequence_number, packet.timestamp)),
            _ => None,
        })
        .collect()
}

fn keyframe_requests(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, Output::RequestKeyframe { .. }))
        .count()
}

#[test]
fn audio_fans_out_to_every_ready_consumer_and_not_to_the_publisher() {
    let now = Instant::now();
    let mut r = router();
    assert!(r.add_consumer(SUB_A, AUDIO));
    assert!(r.add_consumer(SUB_B, AUDIO));
    assert!(
        !r.add_consumer(PUB, AUDIO),
        "nobody consumes their own track"
    );
    assert!(!r.add_consumer(SUB_A, AUDIO), "no duplicate consumers");
    r.handle_consumer_ready(SUB_A, AUDIO, now);
    r.handle_consumer_ready(SUB_B, AUDIO, now);
    r.handle_rtp(AUDIO, packet(7, 100, 960, b"opus"), now);
    let out = drain(&mut r);
    assert_eq!(rtp_for(&out, SUB_A), vec![(100, 960)]);
    assert_eq!(rtp_for(&out, SUB_B), vec![(100, 960)]);
    assert_eq!(out.len(), 2);
}

#[test]
fn nothing_is_forwarded_before_the_consumer_is_ready() {
    let now = Instant::now();
    let mut r = router();
    r.add_consumer(SUB_A, AUDIO);
    r.handle_rtp(AUDIO, packet(7, 1, 0, b"x"), now);
    assert!(drain(&mut r).is_empty());
    assert_eq!(
        r.take_drops().collect::<Vec<_>>(),
        vec![(DropReason::NotReady, 1)]
    );
}

#[test]
fn video_starts_at_a_keyframe_requested_on_readiness() {
    let now = Instant::now();
    let mut r = router();
    r.handle_rtp(VIDEO, packet(9, 500, 0, VP8_DELTA), now); // learn the SSRC
    r.add_consumer(SUB_A, VIDEO);
    r.handle_consumer_ready(SUB_A, VIDEO, now);
    let out = drain(&mut r);
    assert_eq!(
        out,
        vec![Output::RequestKeyframe {
            publisher: PUB,
            track: VIDEO,
            ssrc: 9
        }]
    );
    r.handle_rtp(VIDEO, packet(9, 501, 3000, VP8_DELTA), now);
    r.handle_rtp(VIDEO, packet(9, 502, 6000, VP8_KEY), now);
    r.handle_rtp(VIDEO, packet(9, 503, 6000, VP8_CONT), now);
    r.handle_rtp(VIDEO, packet(9, 504, 9000, VP8_DELTA), now);
    let out = drain(&mut r);
    // The first packet forwarded is the keyframe, and the skipped deltas leave no gap.
    assert_eq!(
        rtp_for(&out, SUB_A),
        vec![(502, 6000), (503, 6000), (504, 9000)]
    );
}

#[test]
fn keyframe_requests_are_throttled_per_track_and_the_owed_one_is_sent_later() {
    let t0 = Instant::now();
    let mut r = router();
    r.handle_rtp(VIDEO, packet(9, 1, 0, VP8_KEY), t0);
    r.add_consumer(SUB_A, VIDEO);
    r.add_consumer(SUB_B, VIDEO);
    r.handle_consumer_ready(SUB_A, VIDEO, t0);
    r.handle_consumer_ready(SUB_B, VIDEO, t0 + Duration::from_millis(10));
    for i in 0..20 {
        r.handle_keyframe_request(SUB_A, VIDEO, t0 + Duration::from_millis(20 + i));
    }
    assert_eq!(
        keyframe_requests(&drain(&mut r)),
        1,
        "one request in 500 ms"
    );
    assert!(r.poll_timeout().is_some(), "a request is owed");
    r.handle_timeout(t0 + Duration::from_millis(499));
    assert_eq!(keyframe_requests(&drain(&mut r)), 0);
    r.handle_timeout(t0 + Duration::from_millis(500));
    assert_eq!(
        keyframe_requests(&drain(&mut r)),
        1,
        "the owed request goes out"
    );
    // The keyframe arrives: nobody waits, nothing is owed.
    r.handle_rtp(
        VIDEO,
        packet(9, 2, 3000, VP8_KEY),
        t0 + Duration::from_millis(600),
    );
    r.handle_timeout(t0 + Duration::from_millis(2000));
    assert_eq!(keyframe_requests(&drain(&mut r)), 0);
    assert!(r.poll_timeout().is_none());
}

#[test]
fn a_request_before_any_packet_is_sent_once_the_ssrc_is_known() {
    let now = Instant::now();
    let mut r = router();
    r.add_consumer(SUB_A, VIDEO);
    r.handle_consumer_ready(SUB_A, VIDEO, now);
    assert_eq!(keyframe_requests(&drain(&mut r)), 0);
    r.handle_rtp(VIDEO, packet(42, 1, 0, VP8_DELTA), now);
    let out = drain(&mut r);
    assert!(out.contains(&Output::RequestKeyframe {
        publisher: PUB,
        track: VIDEO,
        ssrc: 42
    }));
}

#[test]
fn audio_keyframe_requests_are_ignored() {
    let now = Instant::now();
    let mut r = router();
    r.handle_rtp(AUDIO, packet(7, 1, 0, b"x"), now);
    r.add_consumer(SUB_A, AUDIO);
    r.handle_keyframe_request(SUB_A, AUDIO, now);
    assert_eq!(keyframe_requests(&drain(&mut r)), 0);
}

#[test]
fn a_new_publisher_ssrc_rebases_and_waits_for_its_keyframe() {
    let t0 = Instant::now();
    let mut r = router();
    r.add_consumer(SUB_A, VIDEO);
    r.handle_rtp(VIDEO, packet(1, 100, 1000, VP8_KEY), t0);
    r.handle_consumer_ready(SUB_A, VIDEO, t0);
    r.handle_rtp(VIDEO, packet(1, 101, 1000, VP8_KEY), t0);
    r.handle_rtp(VIDEO, packet(1, 102, 4000, VP8_DELTA), t0);
    let t1 = t0 + Duration::from_millis(200);
    r.handle_rtp(VIDEO, packet(2, 9000, 77, VP8_DELTA), t1);
    r.handle_rtp(VIDEO, packet(2, 9001, 3077, VP8_KEY), t1);
    let out = drain(&mut r);
    let sent = rtp_for(&out, SUB_A);
    assert_eq!(sent[..2], [(101, 1000), (102, 4000)]);
    assert_eq!(
        sent[2],
        (103, 4000 + 18_000),
        "continues seq; ts advances 200 ms"
    );
    assert_eq!(sent.len(), 3);
}

#[test]
fn removing_a_participant_removes_its_producers_and_consumers() {
    let now = Instant::now();
    let mut r = router();
    r.add_producer(TrackId(20), SUB_A, MediaKind::Audio, Codec::Opus, 48_000);
    r.add_consumer(SUB_A, AUDIO);
    r.add_consumer(SUB_B, TrackId(20));
    assert_eq!(r.remove_participant(SUB_A), vec![TrackId(20)]);
    assert_eq!(r.consumer_count(), 0);
    assert_eq!(r.producer_count(), 2);
    r.handle_rtp(TrackId(20), packet(5, 1, 0, b"x"), now);
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.remove_producer(VIDEO), Vec::<ParticipantId>::new());
}

#[test]
fn fan_out_to_many_keeps_each_consumer_independent() {
    let now = Instant::now();
    let mut r = router();
    let subs: Vec<_> = (100..150).map(ParticipantId).collect();
    for s in &subs {
        r.add_consumer(*s, AUDIO);
    }
    // Half become ready after the first packet: they see a stream starting at the second.
    for s in &subs[..25] {
        r.handle_consumer_ready(*s, AUDIO, now);
    }
    r.handle_rtp(AUDIO, packet(7, 1, 0, b"a"), now);
    for s in &subs[25..] {
        r.handle_consumer_ready(*s, AUDIO, now);
    }
    r.handle_rtp(AUDIO, packet(7, 2, 960, b"b"), now);
    let out = drain(&mut r);
    assert_eq!(rtp_for(&out, subs[0]), vec![(1, 0), (2, 960)]);
    assert_eq!(rtp_for(&out, subs[49]), vec![(2, 960)]);
    assert_eq!(out.len(), 25 + 50);
}

#[test]
fn a_subscriber_ready_just_after_an_answered_request_waits_the_short_floor_only() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut r = router();
    r.handle_rtp(VIDEO, packet(9, 1, 0, VP8_DELTA), t0);
    r.add_consumer(SUB_A, VIDEO);
    r.add_consumer(SUB_B, VIDEO);
    r.handle_consumer_ready(SUB_A, VIDEO, ms(0));
    assert_eq!(keyframe_requests(&drain(&mut r)), 1);
    // The keyframe answers; A starts.
    r.handle_rtp(VIDEO, packet(9, 2, 3000, VP8_KEY), ms(40));
    assert_eq!(rtp_for(&drain(&mut r), SUB_A).len(), 1);
    // B becomes ready just after it passed: its request waits for the floor, not 500 ms.
    r.handle_consumer_ready(SUB_B, VIDEO, ms(60));
    assert_eq!(keyframe_requests(&drain(&mut r)), 0, "within the floor");
    assert_eq!(r.poll_timeout(), Some(ms(100)));
    r.handle_timeout(ms(100));
    assert_eq!(keyframe_requests(&drain(&mut r)), 1, "after the floor");
    r.handle_rtp(VIDEO, packet(9, 3, 6000, VP8_KEY), ms(140));
    assert_eq!(rtp_for(&drain(&mut r), SUB_B).len(), 1);
}

#[test]
fn loss_reports_keep_the_full_interval_even_after_an_answered_request() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut r = router();
    r.handle_rtp(VIDEO, packet(9, 1, 0, VP8_DELTA), t0);
    r.add_consumer(SUB_A, VIDEO);
    r.handle_consumer_ready(SUB_A, VIDEO, ms(0));
    r.handle_rtp(VIDEO, packet(9, 2, 3000, VP8_KEY), ms(40));
    assert_eq!(keyframe_requests(&drain(&mut r)), 1);
    // A forwards now and keeps reporting picture loss: one request per interval.
    for n in (100..500).step_by(20) {
        r.handle_keyframe_request(SUB_A, VIDEO, ms(n));
        r.handle_timeout(ms(n));
    }
    assert_eq!(keyframe_requests(&drain(&mut r)), 0);
    r.handle_timeout(ms(500));
    assert_eq!(keyframe_requests(&drain(&mut r)), 1);
}

#[test]
fn a_recycled_outgoing_stream_continues_where_the_last_track_on_it_ended() {
    let t0 = Instant::now();
    let mut r = router();
    r.add_consumer(SUB_A, AUDIO);
    r.handle_consumer_ready(SUB_A, AUDIO, t0);
    r.handle_rtp(AUDIO, packet(7, 500, 96_000, b"opus"), t0);
    r.handle_rtp(AUDIO, packet(7, 501, 96_960, b"opus"), t0);
    drain(&mut r);
    let ended = r.end_producer(AUDIO);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].0, SUB_A);

    // Another publisher's audio, sent to SUB_A on the same outgoing stream a second later.
    const NEXT: TrackId = TrackId(12);
    r.add_producer(NEXT, SUB_B, MediaKind::Audio, Codec::Opus, 48_000);
    r.add_consumer(SUB_A, NEXT);
    r.continue_consumer(SUB_A, NEXT, ended[0].1);
    let t1 = t0 + Duration::from_secs(1);
    r.handle_consumer_ready(SUB_A, NEXT, t1);
    r.handle_rtp(NEXT, packet(9, 7, 123, b"opus"), t1);
    r.handle_rtp(NEXT, packet(9, 8, 1_083, b"opus"), t1);
    assert_eq!(
        rtp_for(&drain(&mut r), SUB_A),
        vec![(502, 96_960 + 48_000), (503, 96_960 + 48_000 + 960)]
    );
}
