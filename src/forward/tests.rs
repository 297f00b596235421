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

// Simulcast: three layers of one video track, SSRCs 100 (q), 200 (h), 300 (f).

const SIM: TrackId = TrackId(20);

fn simulcast_router() -> Router {
    let mut r = Router::new(RouterConfig::default());
    r.add_producer(SIM, PUB, MediaKind::Video, Codec::Vp8, 90_000);
    r
}

/// One frame (one packet) on every layer at `at`; keyframes on the layers in `keys`.
fn frame_on_layers(r: &mut Router, n: u16, keys: &[u8], layers: &[u8], at: Instant) {
    for &layer in layers {
        let payload = if keys.contains(&layer) {
            VP8_KEY
        } else {
            VP8_DELTA
        };
        let ssrc = 100 * (layer as u32 + 1);
        let seq = 1000 * (layer as u16 + 1) + n;
        r.handle_layer_rtp(SIM, layer, packet(ssrc, seq, 3000 * n as u32, payload), at);
    }
}

fn forwarded_ssrcs(outputs: &[Output], who: ParticipantId) -> Vec<(u32, u16)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Rtp {
                subscriber, packet, ..
            } if *subscriber == who => Some((packet.ssrc, packet.sequence_number)),
            _ => None,
        })
        .collect()
}

fn requested_ssrcs(outputs: &[Output]) -> Vec<u32> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::RequestKeyframe { ssrc, .. } => Some(*ssrc),
            _ => None,
        })
        .collect()
}

#[test]
fn a_simulcast_consumer_starts_on_the_best_live_layer_at_its_keyframe() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    frame_on_layers(&mut r, 0, &[], &[0, 1, 2], t0);
    r.add_consumer(SUB_A, SIM);
    r.handle_consumer_ready(SUB_A, SIM, t0);
    assert_eq!(
        requested_ssrcs(&drain(&mut r)),
        vec![300],
        "asks the top layer"
    );
    frame_on_layers(&mut r, 1, &[0, 1], &[0, 1, 2], t0);
    assert!(
        forwarded_ssrcs(&drain(&mut r), SUB_A).is_empty(),
        "keyframes of other layers do not start it"
    );
    frame_on_layers(&mut r, 2, &[2], &[0, 1, 2], t0);
    frame_on_layers(&mut r, 3, &[], &[0, 1, 2], t0);
    assert_eq!(
        forwarded_ssrcs(&drain(&mut r), SUB_A),
        vec![(300, 3002), (300, 3003)],
        "only the top layer, from its keyframe"
    );
}

#[test]
fn a_layer_switch_waits_for_the_new_layers_keyframe_and_leaves_no_gap() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    frame_on_layers(&mut r, 0, &[2], &[0, 1, 2], t0);
    r.add_consumer(SUB_A, SIM);
    r.handle_consumer_ready(SUB_A, SIM, t0);
    frame_on_layers(&mut r, 1, &[2], &[0, 1, 2], t0);
    drain(&mut r);
    r.set_consumer_max_layer(SUB_A, SIM, Some(0), t0);
    assert_eq!(
        requested_ssrcs(&drain(&mut r)),
        vec![100],
        "asks the lowest layer"
    );
    // Until layer 0's keyframe the top layer goes on: never a frozen picture.
    frame_on_layers(&mut r, 2, &[], &[0, 1, 2], t0);
    frame_on_layers(&mut r, 3, &[0], &[0, 1, 2], t0);
    frame_on_layers(&mut r, 4, &[2], &[0, 1, 2], t0);
    let out = drain(&mut r);
    let got = forwarded_ssrcs(&out, SUB_A);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].0, 300);
    assert_eq!(got[1].0, 100, "switched at layer 0's keyframe");
    assert_eq!(
        got[2].0, 100,
        "a keyframe on the old layer does not switch back"
    );
    let seqs: Vec<u16> = rtp_for(&out, SUB_A).iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs[1],
        seqs[0].wrapping_add(1),
        "sequence numbers continue"
    );
    assert_eq!(seqs[2], seqs[1].wrapping_add(1));
    let ts: Vec<u32> = rtp_for(&out, SUB_A).iter().map(|(_, t)| *t).collect();
    assert!(ts[1] > ts[0], "timestamps move forward across the switch");
}

#[test]
fn a_layer_that_falls_silent_hands_its_consumers_down() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    frame_on_layers(&mut r, 0, &[2], &[0, 1, 2], t0);
    r.add_consumer(SUB_A, SIM);
    r.handle_consumer_ready(SUB_A, SIM, t0);
    frame_on_layers(&mut r, 1, &[2], &[0, 1, 2], t0);
    drain(&mut r);
    // The publisher's uplink no longer carries the top layer; the others go on.
    let mut later = t0;
    let mut requests = Vec::new();
    for n in 2..=17 {
        later += Duration::from_millis(100);
        frame_on_layers(&mut r, n, &[], &[0, 1], later);
        requests.extend(requested_ssrcs(&drain(&mut r)));
    }
    assert_eq!(requests, vec![200], "asks the next best, once");
    frame_on_layers(&mut r, 18, &[1], &[0, 1], later);
    assert_eq!(
        forwarded_ssrcs(&drain(&mut r), SUB_A),
        vec![(200, 3002)],
        "continuing the top layer's numbers"
    );
    // It comes back: the consumer climbs again at the top layer's keyframe.
    let back = later + Duration::from_millis(100);
    frame_on_layers(&mut r, 19, &[], &[0, 1, 2], back);
    assert_eq!(requested_ssrcs(&drain(&mut r)), vec![300]);
    frame_on_layers(&mut r, 20, &[2], &[0, 1, 2], back);
    assert_eq!(
        forwarded_ssrcs(&drain(&mut r), SUB_A),
        vec![(200, 3004), (300, 3005)]
    );
}

#[test]
fn a_hidden_consumer_gets_nothing_and_restarts_at_a_keyframe_when_shown() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    frame_on_layers(&mut r, 0, &[2], &[0, 1, 2], t0);
    r.add_consumer(SUB_A, SIM);
    r.add_consumer(SUB_B, SIM);
    r.set_consumer_max_layer(SUB_B, SIM, None, t0);
    r.handle_consumer_ready(SUB_A, SIM, t0);
    r.handle_consumer_ready(SUB_B, SIM, t0);
    frame_on_layers(&mut r, 1, &[2], &[0, 1, 2], t0);
    let out = drain(&mut r);
    assert_eq!(forwarded_ssrcs(&out, SUB_A).len(), 1);
    assert!(
        forwarded_ssrcs(&out, SUB_B).is_empty(),
        "hidden from the start"
    );
    assert_eq!(r.wanted_layer(SIM), Some(2));
    r.set_consumer_max_layer(SUB_A, SIM, None, t0);
    assert_eq!(r.wanted_layer(SIM), None, "nobody wants any layer");
    frame_on_layers(&mut r, 2, &[2], &[0, 1, 2], t0);
    assert!(forwarded_ssrcs(&drain(&mut r), SUB_A).is_empty());
    let shown = t0 + Duration::from_secs(1);
    r.set_consumer_max_layer(SUB_B, SIM, Some(1), shown);
    assert_eq!(requested_ssrcs(&drain(&mut r)), vec![200]);
    assert_eq!(r.wanted_layer(SIM), Some(1));
    frame_on_layers(&mut r, 3, &[], &[0, 1, 2], shown);
    frame_on_layers(&mut r, 4, &[1], &[0, 1, 2], shown);
    assert_eq!(forwarded_ssrcs(&drain(&mut r), SUB_B), vec![(200, 2004)]);
}

#[test]
fn picture_loss_asks_for_the_layer_the_subscriber_receives() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    frame_on_layers(&mut r, 0, &[0, 2], &[0, 1, 2], t0);
    r.add_consumer(SUB_A, SIM);
    r.add_consumer(SUB_B, SIM);
    r.set_consumer_max_layer(SUB_B, SIM, Some(0), t0);
    r.handle_consumer_ready(SUB_A, SIM, t0);
    r.handle_consumer_ready(SUB_B, SIM, t0);
    frame_on_layers(&mut r, 1, &[0, 2], &[0, 1, 2], t0);
    drain(&mut r);
    let later = t0 + Duration::from_secs(1);
    r.handle_keyframe_request(SUB_B, SIM, later);
    assert_eq!(
        requested_ssrcs(&drain(&mut r)),
        vec![100],
        "B's losses cost only the small layer a keyframe"
    );
}

#[test]
fn layers_are_bounded() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    r.handle_layer_rtp(SIM, 7, packet(1, 1, 1, VP8_KEY), t0);
    r.handle_layer_rtp(AUDIO, 1, packet(1, 1, 1, b"x"), t0);
    assert_eq!(
        r.take_drops().collect::<Vec<_>>(),
        vec![(DropReason::UnknownTrack, 2)]
    );
}

/// A VP8 keyframe start declaring `height` (and a 16:9 width).
fn vp8_key_of_height(height: u16) -> &'static [u8] {
    let width = height * 16 / 9;
    let [w0, w1] = width.to_le_bytes();
    let [h0, h1] = height.to_le_bytes();
    Box::leak(Box::new([
        0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, w0, w1, h0, h1,
    ]))
}

#[test]
fn a_small_tile_gets_the_smallest_layer_that_looks_sharp() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    for (layer, height) in [(0u8, 180u16), (1, 360), (2, 720)] {
        let ssrc = 100 * (layer as u32 + 1);
        r.handle_layer_rtp(
            SIM,
            layer,
            packet(ssrc, 1, 0, vp8_key_of_height(height)),
            t0,
        );
    }
    r.add_consumer(SUB_A, SIM);
    r.set_consumer_view(SUB_A, SIM, true, Some(340), t0);
    r.handle_consumer_ready(SUB_A, SIM, t0);
    assert_eq!(
        requested_ssrcs(&drain(&mut r)),
        vec![200],
        "360p for a 340 px tile"
    );
    assert_eq!(r.wanted_layer(SIM), Some(1));
    r.set_consumer_view(SUB_A, SIM, true, Some(100), t0);
    assert_eq!(r.wanted_layer(SIM), Some(0));
    r.set_consumer_view(SUB_A, SIM, true, Some(1080), t0);
    assert_eq!(r.wanted_layer(SIM), Some(2), "nothing bigger exists");
    r.set_consumer_view(SUB_A, SIM, false, Some(1080), t0);
    assert_eq!(r.wanted_layer(SIM), None);
}

#[test]
fn the_publisher_is_told_which_layers_anyone_wants() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    let demand = |r: &mut Router| -> Vec<Option<u8>> {
        drain(r)
            .into_iter()
            .filter_map(|o| match o {
                Output::LayersWanted { max_layer, .. } => Some(max_layer),
                _ => None,
            })
            .collect()
    };
    frame_on_layers(&mut r, 0, &[2], &[0], t0);
    r.refresh_demand_if_layers_appeared();
    assert_eq!(demand(&mut r), vec![], "one layer is not simulcast");
    frame_on_layers(&mut r, 1, &[2], &[0, 1, 2], t0);
    r.refresh_demand_if_layers_appeared();
    assert_eq!(demand(&mut r), vec![None], "simulcast, and nobody watches");
    r.add_consumer(SUB_A, SIM);
    r.refresh_demand();
    assert_eq!(demand(&mut r), vec![Some(2)]);
    r.refresh_demand();
    assert_eq!(demand(&mut r), vec![], "said once");
    r.handle_consumer_ready(SUB_A, SIM, t0);
    r.set_consumer_view(SUB_A, SIM, true, Some(120), t0);
    r.refresh_demand();
    assert_eq!(
        demand(&mut r),
        vec![Some(0)],
        "a small tile needs only the small layer"
    );
    r.set_consumer_view(SUB_A, SIM, false, None, t0);
    r.refresh_demand();
    assert_eq!(demand(&mut r), vec![None]);
}

/// A VP8 packet with a 15-bit picture id (and TL0PICIDX), a keyframe start or not.
fn vp8_with_picture_id(picture_id: u16, tl0: u8, key: bool) -> &'static [u8] {
    let [hi, lo] = (picture_id | 0x8000).to_be_bytes();
    let header = if key { 0x00 } else { 0x01 };
    Box::leak(Box::new([0x90, 0xC0, hi, lo, tl0, header, 0x00, 0x00]))
}

fn picture_ids(outputs: &[Output], who: ParticipantId) -> Vec<u16> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Rtp {
                subscriber, packet, ..
            } if *subscriber == who => vp8::Vp8Descriptor::parse(&packet.payload)?.picture_id,
            _ => None,
        })
        .collect()
}

#[test]
fn picture_ids_continue_across_a_layer_switch() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    let send = |r: &mut Router, layer: u8, n: u16, pid: u16, key: bool| {
        let ssrc = 100 * (layer as u32 + 1);
        let payload = vp8_with_picture_id(pid, pid as u8, key);
        r.handle_layer_rtp(
            SIM,
            layer,
            packet(
                ssrc,
                1000 * (layer as u16 + 1) + n,
                3000 * n as u32,
                payload,
            ),
            t0,
        );
    };
    send(&mut r, 0, 0, 50, false);
    send(&mut r, 2, 0, 9000, true);
    r.add_consumer(SUB_A, SIM);
    r.handle_consumer_ready(SUB_A, SIM, t0);
    send(&mut r, 2, 1, 9001, true);
    send(&mut r, 2, 2, 9002, false);
    r.set_consumer_max_layer(SUB_A, SIM, Some(0), t0);
    send(&mut r, 0, 3, 53, true); // the small layer counts far lower
    send(&mut r, 0, 4, 54, false);
    let out = drain(&mut r);
    assert_eq!(picture_ids(&out, SUB_A), vec![9001, 9002, 9003, 9004]);
}

#[test]
fn a_consumer_waiting_for_a_layer_that_stopped_takes_one_that_flows() {
    let t0 = Instant::now();
    let mut r = simulcast_router();
    frame_on_layers(&mut r, 0, &[], &[0, 1, 2], t0);
    r.add_consumer(SUB_A, SIM);
    r.handle_consumer_ready(SUB_A, SIM, t0);
    assert_eq!(requested_ssrcs(&drain(&mut r)), vec![300]);
    // The publisher's encoder pauses its two upper layers (its bandwidth estimate is low):
    // the keyframe asked for never comes.
    let mut at = t0;
    let mut requests = Vec::new();
    for n in 1..=20 {
        at += Duration::from_millis(100);
        frame_on_layers(&mut r, n, &[], &[0], at);
        requests.extend(requested_ssrcs(&drain(&mut r)));
    }
    assert_eq!(requests.last(), Some(&100), "asks the layer that flows");
    frame_on_layers(&mut r, 21, &[0], &[0], at);
    assert_eq!(
        forwarded_ssrcs(&drain(&mut r), SUB_A).len(),
        1,
        "and starts on it"
    );
}
