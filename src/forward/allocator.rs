//! The per-subscriber bandwidth allocator: given what one subscriber's downlink can carry (the
//! send-side estimate) and what it shows (visibility and rendered size per track), which layer
//! of each track it receives, or whether a track is paused.
//!
//! Owns, per subscriber: the estimate, the tracks it subscribes to with their priority, layers
//! and bitrates, the client's visibility reports, and the last decision per track with its
//! hysteresis state. Returns decisions as values ([`AllocationChange`]); the room applies them
//! to the forwarders ([`super::simulcast::SimulcastTrack::set_target`]), tells the client about
//! pauses, and feeds them to [`super::dynacast::Dynacast`].
//!
//! The rules (mediasoup's and LiveKit's):
//! - audio first, always, even when the estimate is below it;
//! - video in priority order (screen share, pinned, active speaker, others; then by track id
//!   for a stable order): each visible track first gets its lowest layer while that fits, a
//!   track that cannot is paused (`PauseReason::Bandwidth`); then, round after round in the
//!   same order, each track is raised one step (the next temporal layer, then the next spatial
//!   layer) while the total fits;
//! - never a layer larger than the rendered size needs; hidden tracks get nothing;
//! - hysteresis: keeping what a track has needs the total to fit the estimate, going above it
//!   needs `upgrade_headroom` of the estimate left over; after a downgrade for bandwidth, no
//!   spatial upgrade (and no resume from a bandwidth pause) for `downgrade_hold`.
//!
//! Must not: read clocks (time is passed in), measure anything itself (bitrates come from
//! [`super::simulcast::SimulcastTrack::layer_bitrates`] or the publisher's nominal encodings).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::simulcast::{LayerTarget, SpatialLayer, MAX_TEMPORAL_LAYERS};
use super::TrackId;

/// Who gets bandwidth first among video tracks; higher first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrackPriority {
    Normal,
    ActiveSpeaker,
    Pinned,
    ScreenShare,
}

/// One spatial layer of a video track as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoLayer {
    /// Frame size of this layer (0 when unknown: never used to cap).
    pub width: u32,
    pub height: u32,
    /// Bits per second of temporal layers 0..=t (cumulative, as
    /// [`super::simulcast::SimulcastTrack::layer_bitrates`] reports them). An entry no larger
    /// than the one before means that temporal layer does not exist; all zero: the layer is
    /// not available. For a layer the publisher paused (dynacast), pass its nominal bitrate so
    /// that it can be chosen (and so resumed).
    pub bitrates: [u64; MAX_TEMPORAL_LAYERS],
}

/// A track one subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackInput {
    Audio {
        bitrate: u64,
    },
    Video {
        priority: TrackPriority,
        /// Lowest first; one entry for a single encoding.
        layers: Vec<VideoLayer>,
    },
}

/// The client's report for one received video track (adaptive stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    pub visible: bool,
    /// Rendered size in device pixels (0 × 0: unknown, no cap).
    pub width: u32,
    pub height: u32,
}

impl Visibility {
    pub const UNKNOWN: Visibility = Visibility {
        visible: true,
        width: 0,
        height: 0,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PauseReason {
    /// The client does not show it.
    Hidden,
    /// Not even the lowest layer fits the estimate: the client shows "paused: poor connection".
    Bandwidth,
    /// The publisher sends no layer at all.
    NoLayers,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Hidden => "hidden",
            PauseReason::Bandwidth => "bandwidth",
            PauseReason::NoLayers => "no_layers",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Allocation {
    Forward(LayerTarget),
    Paused(PauseReason),
}

impl Allocation {
    pub fn target(self) -> Option<LayerTarget> {
        match self {
            Allocation::Forward(t) => Some(t),
            Allocation::Paused(_) => None,
        }
    }
}

/// A decision that changed: apply `to`; `from` is `None` for a new track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationChange {
    pub track: TrackId,
    pub from: Option<Allocation>,
    pub to: Allocation,
}

#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    /// The estimate used before the first one arrives.
    pub initial_estimate: u64,
    /// Share of the estimate that must stay unused after raising a track above what it had
    /// (the gap between keeping and upgrading that stops layers from flapping).
    pub upgrade_headroom: f64,
    /// After a downgrade for bandwidth, no spatial upgrade or resume for this long.
    pub downgrade_hold: Duration,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        Self {
            initial_estimate: 1_000_000,
            upgrade_headroom: 0.1,
            downgrade_hold: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct Track {
    input: TrackInput,
    visibility: Visibility,
    current: Option<Allocation>,
    /// No spatial upgrade or resume before this (set by a downgrade for bandwidth).
    hold_until: Option<Instant>,
}

/// One step a video track can be at: a spatial and temporal layer and its bitrate.
#[derive(Debug, Clone, Copy)]
struct Step {
    target: LayerTarget,
    bitrate: u64,
}

/// One subscriber's allocator.
#[derive(Debug)]
pub struct SubscriberAllocator {
    config: AllocatorConfig,
    estimate: u64,
    tracks: BTreeMap<TrackId, Track>,
    allocated: u64,
    wanted: u64,
}

impl SubscriberAllocator {
    pub fn new(config: AllocatorConfig) -> Self {
        Self {
            estimate: config.initial_estimate,
            config,
            tracks: BTreeMap::new(),
            allocated: 0,
            wanted: 0,
        }
    }

    /// The subscriber's available bitrate (bits per second) from the send-side estimator.
    pub fn handle_estimate(&mut self, bits_per_second: u64) {
        self.estimate = bits_per_second;
    }

    /// Adds a track or updates its priority, layers or bitrates.
    pub fn upsert_track(&mut self, track: TrackId, input: TrackInput) {
        self.tracks
            .entry(track)
            .and_modify(|t| t.input = input.clone())
            .or_insert(Track {
                input,
                visibility: Visibility::UNKNOWN,
                current: None,
                hold_until: None,
            });
    }

    pub fn remove_track(&mut self, track: TrackId) {
        self.tracks.remove(&track);
    }

    /// The client's visibility and rendered size of a track (adaptive stream).
    pub fn handle_visibility(&mut self, track: TrackId, visibility: Visibility) {
        if let Some(t) = self.tracks.get_mut(&track) {
            t.visibility = visibility;
        }
    }

    pub fn allocation(&self, track: TrackId) -> Option<Allocation> {
        self.tracks.get(&track).and_then(|t| t.current)
    }

    /// Bits per second the last allocation uses.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Bits per second the subscriber could use (every shown track at the layer its size
    /// needs): above the estimate, the estimator has reason to probe for more.
    pub fn wanted(&self) -> u64 {
        self.wanted
    }

    /// Decides every track's layer from the current inputs; returns what changed. Call after
    /// each new estimate, visibility report or track change (or on a timer, for the holds).
    pub fn allocate(&mut self, now: Instant) -> Vec<AllocationChange> {
        let estimate = self.estimate;
        let upgrade_limit = (estimate as f64 * (1.0 - self.config.upgrade_headroom)) as u64;
        let mut decided: BTreeMap<TrackId, Allocation> = BTreeMap::new();
        let mut used: u64 = 0;
        let mut wanted: u64 = 0;

        for (id, t) in &self.tracks {
            if let TrackInput::Audio { bitrate } = t.input {
                used += bitrate;
                wanted += bitrate;
                decided.insert(
                    *id,
                    Allocation::Forward(LayerTarget {
                        spatial: SpatialLayer(0),
                        temporal: 0,
                    }),
                );
            }
        }

        let mut video: Vec<(TrackPriority, TrackId, Vec<Step>)> = Vec::new();
        for (id, t) in &self.tracks {
            let TrackInput::Video { priority, layers } = &t.input else {
                continue;
            };
            if !t.visibility.visible {
                decided.insert(*id, Allocation::Paused(PauseReason::Hidden));
                continue;
            }
            let steps = steps_for(layers, t.visibility);
            match steps.last() {
                None => {
                    decided.insert(*id, Allocation::Paused(PauseReason::NoLayers));
                }
                Some(top) => {
                    wanted += top.bitrate;
                    video.push((*priority, *id, steps));
                }
            }
        }
        video.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

        // Where each track stands: an index into its steps, or none (paused).
        let mut at: Vec<Option<usize>> = vec![None; video.len()];
        for (i, (_, id, steps)) in video.iter().enumerate() {
            let t = &self.tracks[id];
            let held = t.hold_until.is_some_and(|h| now < h);
            let was_paused_for_bandwidth =
                t.current == Some(Allocation::Paused(PauseReason::Bandwidth));
            let is_upgrade = !matches!(t.current, Some(Allocation::Forward(_)));
            if was_paused_for_bandwidth && held {
                continue;
            }
            let limit = if is_upgrade { upgrade_limit } else { estimate };
            if used + steps[0].bitrate <= limit {
                used += steps[0].bitrate;
                at[i] = Some(0);
            }
        }
        loop {
            let mut raised = false;
            for (i, (_, id, steps)) in video.iter().enumerate() {
                let Some(step) = at[i] else { continue };
                let Some(next) = steps.get(step + 1) else {
                    continue;
                };
                let t = &self.tracks[id];
                let previous = t.current.and_then(Allocation::target);
                let spatial_up = previous.is_none_or(|p| next.target.spatial > p.spatial);
                if spatial_up && t.hold_until.is_some_and(|h| now < h) {
                    continue;
                }
                let is_upgrade = previous.is_none_or(|p| {
                    (next.target.spatial, next.target.temporal) > (p.spatial, p.temporal)
                });
                let limit = if is_upgrade { upgrade_limit } else { estimate };
                let total = (used + next.bitrate).saturating_sub(steps[step].bitrate);
                if total <= limit {
                    used = total;
                    at[i] = Some(step + 1);
                    raised = true;
                }
            }
            if !raised {
                break;
            }
        }
        // Only a track held below what its size needs was limited by bandwidth; a smaller
        // tile is not a reason to hold back when it grows again.
        let mut limited = Vec::new();
        for (i, (_, id, steps)) in video.iter().enumerate() {
            let allocation = match at[i] {
                Some(step) => Allocation::Forward(steps[step].target),
                None => Allocation::Paused(PauseReason::Bandwidth),
            };
            if at[i] != Some(steps.len() - 1) {
                limited.push(*id);
            }
            decided.insert(*id, allocation);
        }

        let mut changes = Vec::new();
        for (id, to) in decided {
            let t = self
                .tracks
                .get_mut(&id)
                .expect("decided only for known tracks");
            if t.current == Some(to) {
                continue;
            }
            if limited.contains(&id) && is_downgrade(t.current, to) {
                t.hold_until = Some(now + self.config.downgrade_hold);
            }
            changes.push(AllocationChange {
                track: id,
                from: t.current,
                to,
            });
            t.current = Some(to);
        }
        self.allocated = used;
        self.wanted = wanted;
        changes
    }
}

/// Every step of a track up to the layer its rendered size needs, lowest first.
fn steps_for(layers: &[VideoLayer], visibility: Visibility) -> Vec<Step> {
    let available: Vec<(usize, &VideoLayer)> = layers
        .iter()
        .enumerate()
        .filter(|(_, l)| l.bitrates.iter().any(|&b| b > 0))
        .collect();
    // The smallest layer that covers the rendered size in both dimensions; the top one if
    // none does. A layer of unknown size never caps.
    let sized = visibility.width > 0 || visibility.height > 0;
    let cap = available
        .iter()
        .position(|(_, l)| {
            sized
                && l.width > 0
                && l.height > 0
                && l.width >= visibility.width
                && l.height >= visibility.height
        })
        .unwrap_or(available.len().saturating_sub(1));
    let mut steps = Vec::new();
    for (index, layer) in available.iter().take(cap + 1) {
        let mut below = 0;
        for (t, &bitrate) in layer.bitrates.iter().enumerate() {
            if bitrate > below {
                steps.push(Step {
                    target: LayerTarget {
                        spatial: SpatialLayer(*index as u8),
                        temporal: t as u8,
                    },
                    bitrate,
                });
                below = bitrate;
            }
        }
    }
    steps
}

/// A change that lowered what a shown track gets.
fn is_downgrade(from: Option<Allocation>, to: Allocation) -> bool {
    match (from, to) {
        (Some(Allocation::Forward(_)), Allocation::Paused(PauseReason::Bandwidth)) => true,
        (Some(Allocation::Forward(a)), Allocation::Forward(b)) => {
            (b.spatial, b.temporal) < (a.spatial, a.temporal)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
