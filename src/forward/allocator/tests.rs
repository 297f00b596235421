//! The allocator on scripted estimates and visibility reports.

use super::*;

const AUDIO: TrackId = TrackId(1);
const SCREEN: TrackId = TrackId(2);
const CAM_A: TrackId = TrackId(3);
const CAM_B: TrackId = TrackId(4);

const K: u64 = 1000;

/// A camera in three layers with three temporal layers each (cumulative bitrates).
fn camera() -> Vec<VideoLayer> {
    vec![
        VideoLayer {
            width: 320,
            height: 180,
            bitrates: [50 * K, 80 * K, 100 * K, 100 * K],
        },
        VideoLayer {
            width: 640,
            height: 360,
            bitrates: [200 * K, 300 * K, 400 * K, 400 * K],
        },
        VideoLayer {
            width: 1280,
            height: 720,
            bitrates: [600 * K, 900 * K, 1200 * K, 1200 * K],
        },
    ]
}

fn video(priority: TrackPriority) -> TrackInput {
    TrackInput::Video {
        priority,
        layers: camera(),
    }
}

fn at(spatial: u8, temporal: u8) -> Allocation {
    Allocation::Forward(LayerTarget {
        spatial: SpatialLayer(spatial),
        temporal,
    })
}

fn allocator() -> SubscriberAllocator {
    SubscriberAllocator::new(AllocatorConfig::default())
}

#[test]
fn audio_always_goes_first_even_above_the_estimate() {
    let t0 = Instant::now();
    let mut a = allocator();
    a.upsert_track(AUDIO, TrackInput::Audio { bitrate: 40 * K });
    a.upsert_track(CAM_A, video(TrackPriority::Normal));
    a.handle_estimate(30 * K);
    a.allocate(t0);
    assert_eq!(a.allocation(AUDIO), Some(at(0, 0)));
    assert_eq!(
        a.allocation(CAM_A),
        Some(Allocation::Paused(PauseReason::Bandwidth))
    );
}

#[test]
fn raises_one_step_at_a_time_in_priority_order() {
    let t0 = Instant::now();
    let mut a = allocator();
    a.upsert_track(CAM_B, video(TrackPriority::Normal));
    a.upsert_track(SCREEN, video(TrackPriority::ScreenShare));
    a.handle_estimate(600 * K);
    let changes = a.allocate(t0);
    assert_eq!(changes.len(), 2);
    // 50+50, then +30+30+20+20 (temporal), +150+150 (spatial 1), +100 for the screen share:
    // 600 in all would leave no headroom, so the camera stays one step lower.
    assert_eq!(a.allocation(SCREEN), Some(at(1, 1)));
    assert_eq!(a.allocation(CAM_B), Some(at(1, 0)));
    assert_eq!(a.allocated(), 500 * K);
    assert_eq!(a.wanted(), 2400 * K);
    assert!(
        a.allocate(t0).is_empty(),
        "nothing changed, nothing reported"
    );
}

#[test]
fn never_more_than_the_rendered_size_needs_and_nothing_for_hidden_tiles() {
    let t0 = Instant::now();
    let mut a = allocator();
    a.upsert_track(CAM_A, video(TrackPriority::Normal));
    a.upsert_track(CAM_B, video(TrackPriority::Normal));
    a.handle_estimate(10_000 * K);
    a.handle_visibility(
        CAM_A,
        Visibility {
            visible: true,
            width: 300,
            height: 170,
        },
    );
    a.handle_visibility(
        CAM_B,
        Visibility {
            visible: false,
            width: 1280,
            height: 720,
        },
    );
    a.allocate(t0);
    assert_eq!(a.allocation(CAM_A), Some(at(0, 2)));
    assert_eq!(
        a.allocation(CAM_B),
        Some(Allocation::Paused(PauseReason::Hidden))
    );
    assert_eq!(a.allocated(), 100 * K);
    // Shown bigger (a pinned tile): the next layer that covers it, at once (no hold: the
    // smaller size was not a downgrade for bandwidth).
    a.handle_visibility(
        CAM_A,
        Visibility {
            visible: true,
            width: 1000,
            height: 560,
        },
    );
    let changes = a.allocate(t0 + Duration::from_millis(100));
    assert_eq!(
        changes,
        vec![AllocationChange {
            track: CAM_A,
            from: Some(at(0, 2)),
            to: at(2, 2),
        }]
    );
}

#[test]
fn after_a_downgrade_no_spatial_upgrade_until_the_hold_passes() {
    let t0 = Instant::now();
    let mut a = allocator();
    a.upsert_track(CAM_A, video(TrackPriority::Normal));
    a.handle_estimate(2000 * K);
    a.allocate(t0);
    assert_eq!(a.allocation(CAM_A), Some(at(2, 2)));
    // The estimate falls: down to what fits at once.
    a.handle_estimate(450 * K);
    a.allocate(t0 + Duration::from_secs(1));
    assert_eq!(a.allocation(CAM_A), Some(at(1, 2)));
    // It recovers a second later: temporal steps would be fine, but no spatial upgrade yet.
    a.handle_estimate(2000 * K);
    assert!(a.allocate(t0 + Duration::from_secs(2)).is_empty());
    assert_eq!(a.allocation(CAM_A), Some(at(1, 2)));
    let after_hold = t0 + Duration::from_secs(6);
    a.allocate(after_hold);
    assert_eq!(a.allocation(CAM_A), Some(at(2, 2)));
}

#[test]
fn keeping_needs_the_estimate_upgrading_needs_headroom() {
    let t0 = Instant::now();
    let mut a = allocator();
    a.upsert_track(CAM_A, video(TrackPriority::Normal));
    // 400 kbit/s for layer 1 in full: with 10 % headroom an upgrade to it needs 445.
    a.handle_estimate(430 * K);
    a.allocate(t0);
    assert_eq!(a.allocation(CAM_A), Some(at(1, 1)));
    a.handle_estimate(445 * K);
    a.allocate(t0);
    assert_eq!(a.allocation(CAM_A), Some(at(1, 2)));
    // Small dips that still carry it change nothing.
    for e in [420, 400, 430, 405] {
        a.handle_estimate(e * K);
        assert!(a.allocate(t0).is_empty(), "flapped at {e}");
    }
    a.handle_estimate(399 * K);
    assert_eq!(a.allocate(t0).len(), 1);
    assert_eq!(a.allocation(CAM_A), Some(at(1, 1)));
}

#[test]
fn pauses_what_cannot_get_the_lowest_layer_and_resumes_when_it_can() {
    let t0 = Instant::now();
    let mut a = allocator();
    a.upsert_track(AUDIO, TrackInput::Audio { bitrate: 40 * K });
    a.upsert_track(CAM_A, video(TrackPriority::Pinned));
    a.upsert_track(CAM_B, video(TrackPriority::Normal));
    a.handle_estimate(190 * K);
    a.allocate(t0);
    // 40 audio + 50 + 50 fit, then the pinned camera climbs first (170 leaves the headroom).
    assert_eq!(a.allocation(CAM_A), Some(at(0, 1)));
    assert_eq!(a.allocation(CAM_B), Some(at(0, 0)));
    a.handle_estimate(120 * K);
    let changes = a.allocate(t0 + Duration::from_secs(1));
    assert!(changes.contains(&AllocationChange {
        track: CAM_B,
        from: Some(at(0, 0)),
        to: Allocation::Paused(PauseReason::Bandwidth),
    }));
    assert_eq!(a.allocation(CAM_A), Some(at(0, 1)));
    // Enough again, but within the hold the paused track stays paused.
    a.handle_estimate(300 * K);
    a.allocate(t0 + Duration::from_secs(2));
    assert_eq!(
        a.allocation(CAM_B),
        Some(Allocation::Paused(PauseReason::Bandwidth))
    );
    a.allocate(t0 + Duration::from_secs(7));
    assert!(matches!(a.allocation(CAM_B), Some(Allocation::Forward(_))));
}

#[test]
fn layers_without_bitrate_are_skipped_and_no_layers_pause() {
    let t0 = Instant::now();
    let mut a = allocator();
    let mut layers = camera();
    layers[0].bitrates = [0; MAX_TEMPORAL_LAYERS];
    a.upsert_track(
        CAM_A,
        TrackInput::Video {
            priority: TrackPriority::Normal,
            layers,
        },
    );
    a.upsert_track(
        CAM_B,
        TrackInput::Video {
            priority: TrackPriority::Normal,
            layers: vec![],
        },
    );
    a.handle_estimate(250 * K);
    a.allocate(t0);
    assert_eq!(a.allocation(CAM_A), Some(at(1, 0)));
    assert_eq!(
        a.allocation(CAM_B),
        Some(Allocation::Paused(PauseReason::NoLayers))
    );
}
