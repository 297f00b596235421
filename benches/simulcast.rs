//! Per-packet cost of the simulcast forwarder against the single-layer router, in one run:
//! each variant sends one output packet per subscriber per iteration, and the throughput is
//! counted in output packets, so the per-element times compare directly.
//!
//! - `single`: `Router`, one layer, N subscribers (what `benches/fanout.rs` measures);
//! - `simulcast_top`: `SimulcastTrack` with three layers, N subscribers on the top layer,
//!   a top-layer packet in (layer lookup, temporal check, VP8 descriptor parse and renumbering);
//! - `simulcast_spread`: the same track, subscribers spread over the three layers, one packet
//!   of each layer in per iteration (the other layers' consumers skip it).
//!
//!     cargo bench --bench simulcast

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use plaza::forward::simulcast::{LayerTarget, SimulcastConfig, SimulcastTrack, SpatialLayer};
use plaza::forward::{
    Codec, MediaKind, Output, ParticipantId, Router, RouterConfig, RtpPacket, TrackId,
};

const TRACK: TrackId = TrackId(1);
const PUBLISHER: ParticipantId = ParticipantId(1);

/// A 1,100-byte VP8 packet as Chromium sends it: extended descriptor with a 15-bit picture id,
/// TL0PICIDX and TID.
fn packet(ssrc: u32, seq: u16, key: bool) -> RtpPacket {
    let mut payload = vec![0u8; 1100];
    payload[..7].copy_from_slice(&[
        0x90,
        0xe0,
        0x80 | (seq >> 8) as u8 & 0x7f,
        seq as u8,
        7,
        0x00,
        if key { 0x00 } else { 0x01 },
    ]);
    RtpPacket {
        payload_type: 96,
        sequence_number: seq,
        timestamp: seq as u32 * 3000,
        ssrc,
        marker: false,
        payload: Bytes::from(payload),
    }
}

fn router_with(subscribers: u64) -> Router {
    let mut r = Router::new(RouterConfig::default());
    r.add_producer(TRACK, PUBLISHER, MediaKind::Video, Codec::Vp8, 90_000);
    let now = Instant::now();
    r.handle_rtp(TRACK, packet(1, 0, true), now);
    for s in 0..subscribers {
        let sub = ParticipantId(100 + s);
        r.add_consumer(sub, TRACK);
        r.handle_consumer_ready(sub, TRACK, now);
    }
    r.handle_rtp(TRACK, packet(1, 1, true), now);
    while r.poll_output().is_some() {}
    r
}

fn simulcast_with(subscribers: u64, spread: bool) -> SimulcastTrack {
    let mut t = SimulcastTrack::new(
        TRACK,
        PUBLISHER,
        Codec::Vp8,
        90_000,
        3,
        SimulcastConfig {
            // Long enough that no layer counts as silent while the benchmark runs.
            layer_silence: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    let now = Instant::now();
    for s in 0..subscribers {
        let sub = ParticipantId(100 + s);
        let layer = if spread { (s % 3) as u8 } else { 2 };
        t.add_consumer(sub);
        t.handle_consumer_ready(sub, now);
        t.set_target(sub, Some(LayerTarget::full(layer)), now);
    }
    for layer in 0..3u8 {
        t.handle_rtp(SpatialLayer(layer), packet(10 + layer as u32, 1, true), now);
    }
    while t.poll_output().is_some() {}
    t
}

fn drain_router(r: &mut Router) -> usize {
    let mut out = 0;
    while let Some(o) = r.poll_output() {
        if let Output::Rtp { packet, .. } = o {
            out += packet.payload.len();
        }
    }
    out
}

fn drain_track(t: &mut SimulcastTrack) -> usize {
    let mut out = 0;
    while let Some(o) = t.poll_output() {
        if let Output::Rtp { packet, .. } = o {
            out += packet.payload.len();
        }
    }
    out
}

fn per_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulcast");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for subscribers in [6u64, 30] {
        group.throughput(Throughput::Elements(subscribers));
        group.bench_with_input(
            BenchmarkId::new("single", subscribers),
            &subscribers,
            |b, &n| {
                let mut router = router_with(n);
                let template = packet(1, 2, false);
                let mut seq = 2u16;
                let now = Instant::now();
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    let mut p = template.clone();
                    p.sequence_number = seq;
                    router.handle_rtp(TRACK, p, now);
                    drain_router(&mut router)
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("simulcast_top", subscribers),
            &subscribers,
            |b, &n| {
                let mut track = simulcast_with(n, false);
                let template = packet(12, 2, false);
                let mut seq = 2u16;
                let now = Instant::now();
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    let mut p = template.clone();
                    p.sequence_number = seq;
                    track.handle_rtp(SpatialLayer(2), p, now);
                    drain_track(&mut track)
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("simulcast_spread", subscribers),
            &subscribers,
            |b, &n| {
                let mut track = simulcast_with(n, true);
                let templates: Vec<RtpPacket> = (0..3).map(|l| packet(10 + l, 2, false)).collect();
                let mut seq = 2u16;
                let now = Instant::now();
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    for (layer, template) in templates.iter().enumerate() {
                        let mut p = template.clone();
                        p.sequence_number = seq;
                        track.handle_rtp(SpatialLayer(layer as u8), p, now);
                    }
                    drain_track(&mut track)
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, per_packet);
criterion_main!(benches);
