//! Per-packet cost of the forwarding core: one video packet in, fanned out to N subscribers
//! (sequence/timestamp rewrite, one output each), with the outputs drained as the room does.
//!
//!     cargo bench --bench fanout

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use plaza::forward::{
    Codec, MediaKind, Output, ParticipantId, Router, RouterConfig, RtpPacket, TrackId,
};

const TRACK: TrackId = TrackId(1);

fn router_with(subscribers: u64) -> Router {
    let mut r = Router::new(RouterConfig {
        keyframe_request_interval: Duration::from_millis(500),
    });
    r.add_producer(
        TRACK,
        ParticipantId(1),
        MediaKind::Video,
        Codec::Vp8,
        90_000,
    );
    let now = Instant::now();
    // A keyframe first, so every consumer is forwarding when the measurement starts.
    r.handle_rtp(TRACK, packet(0, true), now);
    for s in 0..subscribers {
        let sub = ParticipantId(100 + s);
        r.add_consumer(sub, TRACK);
        r.handle_consumer_ready(sub, TRACK, now);
    }
    r.handle_rtp(TRACK, packet(1, true), now);
    while r.poll_output().is_some() {}
    r
}

fn packet(seq: u16, key: bool) -> RtpPacket {
    static PAYLOAD: [u8; 1100] = [0; 1100];
    let mut payload = PAYLOAD.to_vec();
    payload[0] = 0x10;
    payload[1] = if key { 0x00 } else { 0x01 };
    RtpPacket {
        payload_type: 96,
        sequence_number: seq,
        timestamp: seq as u32 * 3000,
        ssrc: 0x1234,
        marker: false,
        payload: Bytes::from(payload),
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1u64, 10, 50] {
        group.throughput(Throughput::Elements(subscribers));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, &n| {
                let mut router = router_with(n);
                let template = packet(2, false);
                let mut seq = 2u16;
                let now = Instant::now();
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    let mut p = template.clone();
                    p.sequence_number = seq;
                    router.handle_rtp(TRACK, p, now);
                    let mut out = 0;
                    while let Some(o) = router.poll_output() {
                        if let Output::Rtp { packet, .. } = o {
                            out += packet.payload.len();
                        }
                    }
                    out
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
