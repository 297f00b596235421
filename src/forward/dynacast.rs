//! Dynacast: which spatial layers of each published track anyone receives, so the publisher can
//! be told to stop encoding and sending the others (its uplink and CPU drop with them).
//!
//! Owns, per published simulcast track: every subscriber's current target layer (from the
//! allocators' decisions) and what the publisher was last told. A layer is needed while some
//! subscriber's target is that layer or a higher one: the layers below the highest target stay
//! on so that a subscriber whose estimate falls can step down at the next keyframe instead of
//! waiting a signalling round trip for a paused layer to come back (LiveKit keeps them too).
//! Turning a layer on is immediate; turning one off waits `off_delay`, so a subscriber that
//! dips for a moment does not cost the publisher a pause, a resume and a keyframe.
//!
//! Must not: read clocks, talk to publishers; updates come out as values
//! ([`DynacastUpdate`]) for the room to send through signalling.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::simulcast::{SpatialLayer, MAX_SPATIAL_LAYERS};
use super::{ParticipantId, TrackId};

#[derive(Debug, Clone)]
pub struct DynacastConfig {
    /// A layer nobody needs is paused after this long.
    pub off_delay: Duration,
    /// Keep the lowest layer on even when nobody receives the track, so that a new subscriber
    /// starts within a keyframe request rather than a publisher round trip (join time), for
    /// the cost of the smallest encoding.
    pub keep_lowest: bool,
}

impl Default for DynacastConfig {
    fn default() -> Self {
        Self {
            off_delay: Duration::from_secs(3),
            keep_lowest: true,
        }
    }
}

/// Tell `publisher` which layers of `track` to send (`layers[i]`: send spatial layer i).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynacastUpdate {
    pub publisher: ParticipantId,
    pub track: TrackId,
    pub layers: Vec<bool>,
}

#[derive(Debug)]
struct Track {
    publisher: ParticipantId,
    layer_count: usize,
    demand: HashMap<ParticipantId, SpatialLayer>,
    /// What the publisher sends (as last told; all on at the start, as browsers publish).
    enabled: [bool; MAX_SPATIAL_LAYERS],
    /// Since when an enabled layer has not been needed.
    unneeded_since: [Option<Instant>; MAX_SPATIAL_LAYERS],
}

impl Track {
    fn needed(&self, keep_lowest: bool) -> [bool; MAX_SPATIAL_LAYERS] {
        let top = self.demand.values().max().map(|l| l.0 as usize);
        std::array::from_fn(|i| {
            i < self.layer_count && (top.is_some_and(|top| i <= top) || (keep_lowest && i == 0))
        })
    }
}

#[derive(Debug, Default)]
pub struct Dynacast {
    config: DynacastConfig,
    tracks: HashMap<TrackId, Track>,
    updates: VecDeque<DynacastUpdate>,
}

impl Dynacast {
    pub fn new(config: DynacastConfig) -> Self {
        Self {
            config,
            ..Default::default()
        }
    }

    /// A simulcast track was published with `layer_count` layers, all of them sending.
    pub fn add_track(&mut self, track: TrackId, publisher: ParticipantId, layer_count: usize) {
        let layer_count = layer_count.clamp(1, MAX_SPATIAL_LAYERS);
        self.tracks.insert(
            track,
            Track {
                publisher,
                layer_count,
                demand: HashMap::new(),
                enabled: std::array::from_fn(|i| i < layer_count),
                unneeded_since: [None; MAX_SPATIAL_LAYERS],
            },
        );
    }

    pub fn remove_track(&mut self, track: TrackId) {
        self.tracks.remove(&track);
    }

    /// A subscriber's allocation for `track` changed: the spatial layer it receives, or `None`
    /// when paused or unsubscribed.
    pub fn handle_target(
        &mut self,
        track: TrackId,
        subscriber: ParticipantId,
        layer: Option<SpatialLayer>,
        now: Instant,
    ) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        match layer {
            Some(l) => t.demand.insert(subscriber, l),
            None => t.demand.remove(&subscriber),
        };
        self.update(track, now);
    }

    /// The subscriber left: it needs nothing any more.
    pub fn remove_subscriber(&mut self, subscriber: ParticipantId, now: Instant) {
        let affected: Vec<TrackId> = self
            .tracks
            .iter_mut()
            .filter_map(|(id, t)| t.demand.remove(&subscriber).map(|_| *id))
            .collect();
        for track in affected {
            self.update(track, now);
        }
    }

    /// Pauses layers whose `off_delay` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<TrackId> = self.tracks.keys().copied().collect();
        for track in ids {
            self.update(track, now);
        }
    }

    /// When a layer is next due to be paused.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tracks
            .values()
            .flat_map(|t| t.unneeded_since.iter().flatten())
            .map(|since| *since + self.config.off_delay)
            .min()
    }

    pub fn poll_update(&mut self) -> Option<DynacastUpdate> {
        self.updates.pop_front()
    }

    /// Which layers the publisher sends now, as far as dynacast knows.
    pub fn enabled_layers(&self, track: TrackId) -> Option<Vec<bool>> {
        self.tracks
            .get(&track)
            .map(|t| t.enabled[..t.layer_count].to_vec())
    }

    fn update(&mut self, track: TrackId, now: Instant) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        let needed = t.needed(self.config.keep_lowest);
        let mut changed = false;
        for (i, &is_needed) in needed.iter().enumerate().take(t.layer_count) {
            if is_needed {
                t.unneeded_since[i] = None;
                if !t.enabled[i] {
                    t.enabled[i] = true;
                    changed = true;
                }
            } else if t.enabled[i] {
                let since = *t.unneeded_since[i].get_or_insert(now);
                if now >= since + self.config.off_delay {
                    t.enabled[i] = false;
                    t.unneeded_since[i] = None;
                    changed = true;
                }
            }
        }
        if changed {
            self.updates.push_back(DynacastUpdate {
                publisher: t.publisher,
                track,
                layers: t.enabled[..t.layer_count].to_vec(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: ParticipantId = ParticipantId(1);
    const A: ParticipantId = ParticipantId(2);
    const B: ParticipantId = ParticipantId(3);
    const CAM: TrackId = TrackId(9);

    fn updates(d: &mut Dynacast) -> Vec<Vec<bool>> {
        std::iter::from_fn(|| d.poll_update())
            .map(|u| u.layers)
            .collect()
    }

    #[test]
    fn layers_above_every_subscribers_target_are_paused_after_the_delay() {
        let t0 = Instant::now();
        let mut d = Dynacast::new(DynacastConfig::default());
        d.add_track(CAM, PUB, 3);
        d.handle_target(CAM, A, Some(SpatialLayer(0)), t0);
        d.handle_target(CAM, B, Some(SpatialLayer(1)), t0);
        assert!(updates(&mut d).is_empty(), "not before the delay");
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(3)));
        d.handle_timeout(t0 + Duration::from_secs(3));
        assert_eq!(updates(&mut d), vec![vec![true, true, false]]);
        // B shows A small too: layer 1 goes as well.
        let t1 = t0 + Duration::from_secs(4);
        d.handle_target(CAM, B, Some(SpatialLayer(0)), t1);
        d.handle_timeout(t1 + Duration::from_secs(3));
        assert_eq!(updates(&mut d), vec![vec![true, false, false]]);
        // Someone wants the top layer: on at once, with the one below it.
        let t2 = t1 + Duration::from_secs(5);
        d.handle_target(CAM, A, Some(SpatialLayer(2)), t2);
        assert_eq!(updates(&mut d), vec![vec![true, true, true]]);
    }

    #[test]
    fn a_short_dip_pauses_nothing() {
        let t0 = Instant::now();
        let mut d = Dynacast::new(DynacastConfig::default());
        d.add_track(CAM, PUB, 3);
        d.handle_target(CAM, A, Some(SpatialLayer(2)), t0);
        d.handle_target(CAM, A, Some(SpatialLayer(0)), t0 + Duration::from_secs(1));
        d.handle_target(CAM, A, Some(SpatialLayer(2)), t0 + Duration::from_secs(2));
        d.handle_timeout(t0 + Duration::from_secs(10));
        assert!(updates(&mut d).is_empty());
    }

    #[test]
    fn nobody_watching_keeps_only_the_lowest_layer() {
        let t0 = Instant::now();
        let mut d = Dynacast::new(DynacastConfig::default());
        d.add_track(CAM, PUB, 3);
        d.handle_target(CAM, A, Some(SpatialLayer(2)), t0);
        d.handle_target(CAM, A, None, t0); // hidden
        d.remove_subscriber(B, t0);
        d.handle_timeout(t0 + Duration::from_secs(3));
        assert_eq!(updates(&mut d), vec![vec![true, false, false]]);
        let mut d = Dynacast::new(DynacastConfig {
            keep_lowest: false,
            ..Default::default()
        });
        d.add_track(CAM, PUB, 2);
        d.handle_timeout(t0);
        d.handle_timeout(t0 + Duration::from_secs(3));
        assert_eq!(updates(&mut d), vec![vec![false, false]]);
        assert_eq!(d.enabled_layers(CAM), Some(vec![false, false]));
    }
}
