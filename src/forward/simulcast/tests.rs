//! The simulcast forwarder on scripted packet sequences and virtual time: switching at
//! keyframes only, continuity of sequence numbers, timestamps, picture ids and TL0PICIDX
//! across switches and drops, keyframe-request routing and throttling.

use super::*;
use crate::forward::vp8::tests::vp8_payload;
use bytes::Bytes;

const PUB: ParticipantId = ParticipantId(1);
const SUB: ParticipantId = ParticipantId(2);
const SUB_B: ParticipantId = ParticipantId(3);
const TRACK: TrackId = TrackId(10);

/// One simulcast encoding as a browser sends it: own SSRC, sequence numbers, timestamps,
/// picture ids and TL0PICIDX, an L1T3 temporal pattern (0, 2, 1, 2, ...).
struct FakeLayer {
    layer: SpatialLayer,
    ssrc: u32,
    seq: u16,
    ts: u32,
    picture_id: u16,
    tl0: u8,
    frame: u32,
}

impl FakeLayer {
    fn new(layer: u8, ssrc: u32, seq: u16, ts: u32, picture_id: u16, tl0: u8) -> Self {
        Self {
            layer: SpatialLayer(layer),
            ssrc,
            seq,
            ts,
            picture_id,
            tl0,
            frame: 0,
        }
    }

    /// The next frame (30 fps) in `packets` packets.
    fn frame(&mut self, keyframe: bool, packets: usize) -> Vec<RtpPacket> {
        if keyframe {
            self.frame = 0;
        }
        let tid = [0u8, 2, 1, 2][self.frame as usize % 4];
        if tid == 0 && self.frame > 0 {
            self.tl0 = self.tl0.wrapping_add(1);
        }
        let sync = tid > 0 && self.frame % 4 <= 2; // the first tid-1 and tid-2 frames of a cycle
        let out = (0..packets)
            .map(|i| {
                let p = RtpPacket {
                    payload_type: 96,
                    sequence_number: self.seq,
                    timestamp: self.ts,
                    ssrc: self.ssrc,
                    marker: i + 1 == packets,
                    payload: vp8_payload(i == 0, keyframe, self.picture_id, self.tl0, tid, sync),
                };
                self.seq = self.seq.wrapping_add(1);
                p
            })
            .collect();
        self.ts = self.ts.wrapping_add(3000);
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.frame += 1;
        out
    }
}

fn track(layers: usize) -> SimulcastTrack {
    SimulcastTrack::new(
        TRACK,
        PUB,
        Codec::Vp8,
        90_000,
        layers,
        SimulcastConfig::default(),
    )
}

fn feed(t: &mut SimulcastTrack, layer: SpatialLayer, packets: Vec<RtpPacket>, now: Instant) {
    for p in packets {
        t.handle_rtp(layer, p, now);
    }
}

/// What one subscriber got: (seq, ts, picture id, tl0, tid).
fn sent_to(t: &mut SimulcastTrack, who: ParticipantId) -> Vec<(u16, u32, u16, u8, u8)> {
    let mut out = Vec::new();
    let mut rest = VecDeque::new();
    while let Some(o) = t.poll_output() {
        match &o {
            Output::Rtp {
                subscriber, packet, ..
            } if *subscriber == who => {
                let d = Vp8Descriptor::parse(&packet.payload).unwrap();
                out.push((
                    packet.sequence_number,
                    packet.timestamp,
                    d.picture_id.unwrap(),
                    d.tl0_pic_idx.unwrap(),
                    d.temporal_id.unwrap(),
                ));
            }
            _ => rest.push_back(o),
        }
    }
    t.outputs = rest;
    out
}

fn keyframe_requests(t: &mut SimulcastTrack) -> Vec<u32> {
    let mut ssrcs = Vec::new();
    let mut rest = VecDeque::new();
    while let Some(o) = t.poll_output() {
        match o {
            Output::RequestKeyframe { ssrc, .. } => ssrcs.push(ssrc),
            other => rest.push_back(other),
        }
    }
    t.outputs = rest;
    ssrcs
}

/// Checks the stream a subscriber saw is gap-free: sequence numbers +1, picture ids +1 per
/// frame, TL0PICIDX +1 per base-layer frame, timestamps never going back.
fn assert_continuous(got: &[(u16, u32, u16, u8, u8)]) {
    for w in got.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(
            b.0,
            a.0.wrapping_add(1),
            "sequence gap between {a:?} and {b:?}"
        );
        assert!(
            (b.1.wrapping_sub(a.1) as i32) >= 0,
            "timestamp went back between {a:?} and {b:?}"
        );
        if b.1 != a.1 {
            assert_eq!(
                b.2,
                (a.2 + 1) & 0x7fff,
                "picture id gap between {a:?} and {b:?}"
            );
            let tl0_step = if b.4 == 0 { 1 } else { 0 };
            assert_eq!(
                b.3,
                a.3.wrapping_add(tl0_step),
                "TL0PICIDX between {a:?} and {b:?}"
            );
        } else {
            assert_eq!(b.2, a.2, "one frame, one picture id");
        }
    }
}

fn ready(t: &mut SimulcastTrack, who: ParticipantId, target: Option<LayerTarget>, now: Instant) {
    t.add_consumer(who);
    t.handle_consumer_ready(who, now);
    t.set_target(who, target, now);
}

#[test]
fn starts_only_at_a_keyframe_and_asks_the_target_layer_for_one() {
    let t0 = Instant::now();
    let mut t = track(3);
    let mut low = FakeLayer::new(0, 100, 1000, 5000, 10, 3);
    let mut high = FakeLayer::new(2, 300, 40000, 900, 7000, 200);
    feed(&mut t, low.layer, low.frame(true, 1), t0);
    feed(&mut t, high.layer, high.frame(true, 3), t0);
    ready(&mut t, SUB, Some(LayerTarget::full(2)), t0);
    assert_eq!(
        keyframe_requests(&mut t),
        vec![300],
        "asked layer 2, nobody else"
    );
    feed(&mut t, high.layer, high.frame(false, 3), t0);
    feed(&mut t, low.layer, low.frame(false, 1), t0);
    assert!(sent_to(&mut t, SUB).is_empty(), "nothing before a keyframe");
    let drops: Vec<_> = t.take_drops().collect();
    assert_eq!(drops, vec![(LayerDrop::AwaitingKeyframe, 3)]);
    feed(&mut t, high.layer, high.frame(true, 3), t0);
    let got = sent_to(&mut t, SUB);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].0, 40006, "the first source passes through");
}

#[test]
fn switches_only_at_a_keyframe_of_the_target_and_stays_continuous() {
    let t0 = Instant::now();
    let mut t = track(3);
    let mut low = FakeLayer::new(0, 100, 65530, 5000, 32765, 254);
    let mut mid = FakeLayer::new(1, 200, 20000, 1_000_000, 500, 40);
    ready(&mut t, SUB, Some(LayerTarget::full(0)), t0);
    let mut now = t0;
    let frame = Duration::from_millis(33);
    feed(&mut t, low.layer, low.frame(true, 2), now);
    feed(&mut t, mid.layer, mid.frame(true, 4), now);
    for _ in 0..6 {
        now += frame;
        feed(&mut t, low.layer, low.frame(false, 2), now);
        feed(&mut t, mid.layer, mid.frame(false, 4), now);
    }
    // Upgrade: nothing changes until layer 1's keyframe.
    t.set_target(SUB, Some(LayerTarget::full(1)), now);
    assert_eq!(keyframe_requests(&mut t), vec![200]);
    for _ in 0..5 {
        now += frame;
        feed(&mut t, low.layer, low.frame(false, 2), now);
        feed(&mut t, mid.layer, mid.frame(false, 4), now);
    }
    assert_eq!(t.consumer_layers(SUB).unwrap().0, Some(SpatialLayer(0)));
    now += frame;
    feed(&mut t, low.layer, low.frame(false, 2), now);
    feed(&mut t, mid.layer, mid.frame(true, 4), now);
    assert_eq!(t.consumer_layers(SUB).unwrap().0, Some(SpatialLayer(1)));
    for _ in 0..5 {
        now += frame;
        feed(&mut t, low.layer, low.frame(false, 2), now);
        feed(&mut t, mid.layer, mid.frame(false, 4), now);
    }
    // And down again, at layer 0's keyframe.
    t.set_target(SUB, Some(LayerTarget::full(0)), now);
    assert_eq!(keyframe_requests(&mut t), vec![100]);
    now += frame;
    feed(&mut t, mid.layer, mid.frame(false, 4), now);
    feed(&mut t, low.layer, low.frame(false, 2), now);
    assert_eq!(t.consumer_layers(SUB).unwrap().0, Some(SpatialLayer(1)));
    now += frame;
    feed(&mut t, mid.layer, mid.frame(false, 4), now);
    feed(&mut t, low.layer, low.frame(true, 2), now);
    assert_eq!(t.consumer_layers(SUB).unwrap().0, Some(SpatialLayer(0)));
    now += frame;
    feed(&mut t, low.layer, low.frame(false, 2), now);

    let got = sent_to(&mut t, SUB);
    assert_continuous(&got);
    assert_eq!(got[0].0, 65530);
    assert!(got.len() > 40);
    let switches: Vec<_> = t.take_switches().map(|s| (s.from, s.to)).collect();
    assert_eq!(
        switches,
        vec![
            (None, SpatialLayer(0)),
            (Some(SpatialLayer(0)), SpatialLayer(1)),
            (Some(SpatialLayer(1)), SpatialLayer(0)),
        ]
    );
}

#[test]
fn timestamps_line_up_through_sender_reports() {
    let t0 = Instant::now();
    let mut t = track(2);
    // Same capture clock, different random RTP offsets: layer 1's ts = layer 0's + 777_000.
    let mut low = FakeLayer::new(0, 100, 1, 10_000, 1, 0);
    let mut mid = FakeLayer::new(1, 200, 1, 787_000, 1, 0);
    let ntp = 5u64 << 32;
    t.handle_sender_report(SpatialLayer(0), 100, SenderReport { ntp, rtp: 10_000 });
    t.handle_sender_report(SpatialLayer(1), 200, SenderReport { ntp, rtp: 787_000 });
    ready(&mut t, SUB, Some(LayerTarget::full(0)), t0);
    let mut now = t0;
    for i in 0..4 {
        feed(&mut t, low.layer, low.frame(i == 0, 1), now);
        feed(&mut t, mid.layer, mid.frame(i == 0, 1), now);
        now += Duration::from_millis(33);
    }
    t.set_target(SUB, Some(LayerTarget::full(1)), now);
    // The switch happens 200 ms of wall clock later than the frame's capture suggests (a
    // slow path): the sender reports, not the arrival time, decide the timestamp.
    now += Duration::from_millis(200);
    let key = mid.frame(true, 1);
    let expected = key[0].timestamp - 777_000;
    feed(&mut t, mid.layer, key, now);
    let got = sent_to(&mut t, SUB);
    assert_eq!(got.last().unwrap().1, expected);

    // Without sender reports the switch advances by wall-clock time.
    let mut t = track(2);
    let mut low = FakeLayer::new(0, 100, 1, 10_000, 1, 0);
    let mut mid = FakeLayer::new(1, 200, 1, 787_000, 1, 0);
    ready(&mut t, SUB, Some(LayerTarget::full(0)), t0);
    feed(&mut t, low.layer, low.frame(true, 1), t0);
    t.set_target(SUB, Some(LayerTarget::full(1)), t0);
    feed(
        &mut t,
        mid.layer,
        mid.frame(true, 1),
        t0 + Duration::from_millis(100),
    );
    let got = sent_to(&mut t, SUB);
    assert_eq!(got[1].1, 10_000 + 9_000);
}

#[test]
fn temporal_layers_are_dropped_without_gaps_and_taken_again_at_a_sync_frame() {
    let t0 = Instant::now();
    let mut t = track(1);
    let mut l = FakeLayer::new(0, 100, 65500, 0, 32700, 250);
    ready(
        &mut t,
        SUB,
        Some(LayerTarget {
            spatial: SpatialLayer(0),
            temporal: 0,
        }),
        t0,
    );
    let mut now = t0;
    feed(&mut t, l.layer, l.frame(true, 2), now);
    for _ in 0..40 {
        now += Duration::from_millis(33);
        feed(&mut t, l.layer, l.frame(false, 2), now);
    }
    let base_only = sent_to(&mut t, SUB);
    assert!(base_only.iter().all(|p| p.4 == 0));
    assert_eq!(base_only.len(), 2 * 11, "one frame in four is base layer");
    let dropped: u64 = t
        .take_drops()
        .filter(|(r, _)| *r == LayerDrop::TemporalLayer)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(dropped, 2 * 30);
    // Up to two temporal layers: tid 1 comes back at its sync frame, tid 2 stays dropped.
    t.set_target(
        SUB,
        Some(LayerTarget {
            spatial: SpatialLayer(0),
            temporal: 1,
        }),
        now,
    );
    assert!(
        keyframe_requests(&mut t).is_empty(),
        "no keyframe for a temporal change"
    );
    for _ in 0..16 {
        now += Duration::from_millis(33);
        feed(&mut t, l.layer, l.frame(false, 2), now);
    }
    let more = sent_to(&mut t, SUB);
    assert!(more.iter().any(|p| p.4 == 1));
    assert!(more.iter().all(|p| p.4 <= 1));
    let mut all = base_only;
    all.extend(more);
    assert_continuous(&all);
}

#[test]
fn padding_is_dropped_without_a_gap() {
    let t0 = Instant::now();
    let mut t = track(1);
    let mut l = FakeLayer::new(0, 100, 10, 0, 1, 0);
    ready(&mut t, SUB, Some(LayerTarget::full(0)), t0);
    feed(&mut t, l.layer, l.frame(true, 2), t0);
    let padding = RtpPacket {
        payload_type: 96,
        sequence_number: l.seq,
        timestamp: l.ts,
        ssrc: 100,
        marker: false,
        payload: Bytes::new(),
    };
    l.seq += 1;
    t.handle_rtp(l.layer, padding, t0);
    feed(&mut t, l.layer, l.frame(false, 2), t0);
    let got = sent_to(&mut t, SUB);
    assert_eq!(
        got.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![10, 11, 12, 13]
    );
}

#[test]
fn keyframe_requests_are_throttled_per_layer_and_per_subscriber() {
    let t0 = Instant::now();
    let mut t = track(3);
    let mut low = FakeLayer::new(0, 100, 1, 0, 1, 0);
    let mut high = FakeLayer::new(2, 300, 1, 0, 1, 0);
    feed(&mut t, low.layer, low.frame(true, 1), t0);
    feed(&mut t, high.layer, high.frame(true, 1), t0);
    ready(&mut t, SUB, Some(LayerTarget::full(0)), t0);
    ready(&mut t, SUB_B, Some(LayerTarget::full(2)), t0);
    assert_eq!(keyframe_requests(&mut t), vec![100, 300]);
    feed(&mut t, low.layer, low.frame(true, 1), t0);
    feed(&mut t, high.layer, high.frame(true, 1), t0);
    // SUB's decoder lost a picture: its request goes to layer 0 only, and once per second.
    let t1 = t0 + Duration::from_millis(600);
    assert_eq!(
        t.handle_keyframe_request(SUB, t1),
        KeyframeRequestOutcome::Forwarded(SpatialLayer(0))
    );
    assert_eq!(keyframe_requests(&mut t), vec![100]);
    for ms in [700, 900, 1500] {
        assert_eq!(
            t.handle_keyframe_request(SUB, t0 + Duration::from_millis(ms)),
            KeyframeRequestOutcome::Throttled
        );
    }
    assert!(keyframe_requests(&mut t).is_empty());
    // The layer throttle: SUB_B's request right after SUB's is owed, sent on the timer.
    let t2 = t0 + Duration::from_millis(1700);
    assert_eq!(
        t.handle_keyframe_request(SUB, t2),
        KeyframeRequestOutcome::Forwarded(SpatialLayer(0))
    );
    assert_eq!(keyframe_requests(&mut t), vec![100]);
    t.set_target(SUB_B, Some(LayerTarget::full(0)), t2);
    assert!(
        keyframe_requests(&mut t).is_empty(),
        "layer 0 was just asked"
    );
    let at = t.poll_timeout().unwrap();
    assert_eq!(at, t2 + Duration::from_millis(500));
    t.handle_timeout(at);
    assert_eq!(keyframe_requests(&mut t), vec![100]);
}

#[test]
fn pause_and_resume_restart_at_a_keyframe_without_a_gap() {
    let t0 = Instant::now();
    let mut t = track(1);
    let mut l = FakeLayer::new(0, 100, 7, 0, 1, 0);
    ready(&mut t, SUB, Some(LayerTarget::full(0)), t0);
    let mut now = t0;
    feed(&mut t, l.layer, l.frame(true, 2), now);
    feed(&mut t, l.layer, l.frame(false, 2), now);
    t.set_target(SUB, None, now);
    for _ in 0..10 {
        now += Duration::from_millis(33);
        feed(&mut t, l.layer, l.frame(false, 2), now);
    }
    t.set_target(SUB, Some(LayerTarget::full(0)), now);
    assert_eq!(keyframe_requests(&mut t), vec![100]);
    feed(&mut t, l.layer, l.frame(false, 2), now);
    feed(&mut t, l.layer, l.frame(true, 2), now);
    let got = sent_to(&mut t, SUB);
    assert_eq!(got.len(), 6);
    assert_continuous(&got);
    assert!(
        got[4].1 > got[3].1 + 3000,
        "the pause shows in the timestamps"
    );
}

#[test]
fn a_stopped_layer_lets_the_consumer_start_again_from_a_lower_keyframe() {
    let t0 = Instant::now();
    let mut t = track(2);
    let mut low = FakeLayer::new(0, 100, 1, 0, 1, 0);
    let mut mid = FakeLayer::new(1, 200, 5000, 0, 900, 0);
    ready(&mut t, SUB, Some(LayerTarget::full(1)), t0);
    feed(&mut t, mid.layer, mid.frame(true, 2), t0);
    feed(&mut t, low.layer, low.frame(true, 1), t0);
    assert_eq!(t.consumer_layers(SUB).unwrap().0, Some(SpatialLayer(1)));
    // The publisher stops layer 1 (its uplink, or dynacast). Two seconds later layer 0's
    // keyframe is taken although the target is still 1.
    let later = t0 + Duration::from_secs(2);
    feed(&mut t, low.layer, low.frame(false, 1), later);
    feed(&mut t, low.layer, low.frame(true, 1), later);
    assert_eq!(t.consumer_layers(SUB).unwrap().0, Some(SpatialLayer(0)));
    assert_eq!(t.layer_bitrates(later)[1], [0; MAX_TEMPORAL_LAYERS]);
    let got = sent_to(&mut t, SUB);
    assert_eq!(got.len(), 3);
    assert_continuous(&got);
}

#[test]
fn a_continued_stream_and_a_removed_consumer_hand_over_their_ends() {
    let t0 = Instant::now();
    let mut t = track(1);
    let mut l = FakeLayer::new(0, 100, 7, 500, 1, 0);
    t.add_consumer(SUB);
    t.continue_consumer(SUB, Continuation::new(65535, 1_000_000, t0));
    t.handle_consumer_ready(SUB, t0);
    t.set_target(SUB, Some(LayerTarget::full(0)), t0);
    feed(
        &mut t,
        l.layer,
        l.frame(true, 2),
        t0 + Duration::from_millis(10),
    );
    let got = sent_to(&mut t, SUB);
    assert_eq!(got[0].0, 0);
    assert_eq!(got[0].1, 1_000_000 + 900);
    let end = t.remove_consumer(SUB).unwrap();
    assert_eq!(end.last().map(|(s, ts, _)| (s, ts)), Some((1, 1_000_900)));
}

#[test]
fn measures_bitrates_per_layer_and_temporal_layer() {
    let t0 = Instant::now();
    let mut t = track(1);
    let mut l = FakeLayer::new(0, 100, 7, 500, 1, 0);
    let mut now = t0;
    for i in 0..61 {
        feed(&mut t, l.layer, l.frame(i == 0, 1), now);
        now += Duration::from_millis(33);
    }
    let rates = t.layer_bitrates(now)[0];
    // 21 bytes per packet (12 header + 9 payload), 30 frames per second.
    let total = 30 * 21 * 8;
    assert!(rates[3].abs_diff(total) < total / 10, "{rates:?}");
    assert!(rates[0] < rates[1] && rates[1] < rates[2], "{rates:?}");
}

#[test]
fn h264_switches_at_idr() {
    let t0 = Instant::now();
    let mut t = SimulcastTrack::new(
        TRACK,
        PUB,
        Codec::H264,
        90_000,
        2,
        SimulcastConfig::default(),
    );
    let p = |ssrc: u32, seq: u16, payload: &'static [u8]| RtpPacket {
        payload_type: 102,
        sequence_number: seq,
        timestamp: seq as u32 * 3000,
        ssrc,
        marker: true,
        payload: Bytes::from_static(payload),
    };
    ready(&mut t, SUB, Some(LayerTarget::full(0)), t0);
    t.handle_rtp(SpatialLayer(0), p(1, 10, &[0x65, 0]), t0); // IDR
    t.handle_rtp(SpatialLayer(0), p(1, 11, &[0x41, 0]), t0);
    t.set_target(SUB, Some(LayerTarget::full(1)), t0);
    t.handle_rtp(SpatialLayer(1), p(2, 500, &[0x41, 0]), t0);
    t.handle_rtp(SpatialLayer(1), p(2, 501, &[0x7c, 0x85, 0]), t0); // FU-A start of an IDR
    t.handle_rtp(SpatialLayer(1), p(2, 502, &[0x7c, 0x05, 0]), t0);
    let seqs: Vec<u16> = std::iter::from_fn(|| t.poll_output())
        .filter_map(|o| match o {
            Output::Rtp { packet, .. } => Some(packet.sequence_number),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![10, 11, 12, 13]);
}

#[test]
fn garbage_payloads_never_panic() {
    let t0 = Instant::now();
    let mut t = track(3);
    ready(&mut t, SUB, Some(LayerTarget::full(1)), t0);
    let mut x: u32 = 0x1234_5678;
    for i in 0..5000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let len = (x % 12) as usize;
        let payload: Vec<u8> = (0..len).map(|j| (x >> (j % 4 * 8)) as u8).collect();
        let p = RtpPacket {
            payload_type: 96,
            sequence_number: (x >> 7) as u16,
            timestamp: x,
            ssrc: 100 + (x % 4),
            marker: false,
            payload: Bytes::from(payload),
        };
        t.handle_rtp(
            SpatialLayer((i % 4) as u8),
            p,
            t0 + Duration::from_millis(i as u64),
        );
        while t.poll_output().is_some() {}
    }
}
