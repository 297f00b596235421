//! The registry of live rooms: a name → [`RoomHandle`] map, the only map shared between tasks.
//! A room is created by its first join and removes itself when its last member leaves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use super::room::{JoinAccepted, RoomCommand, RoomHandle, RoomTask, SessionEvent};
use super::workers::Workers;
use crate::config::Config;
use crate::forward::{ParticipantId, RouterConfig};
use crate::metrics::Metrics;
use crate::signal::protocol::{ClientError, ErrorCode};

pub struct Registry {
    rooms: Arc<DashMap<String, RoomHandle>>,
    next_room_id: AtomicU64,
    max_rooms: usize,
    max_participants: usize,
    media_queue: usize,
    router_config: RouterConfig,
    metrics: Metrics,
    workers: Workers,
}

impl Registry {
    pub fn new(config: &Config, metrics: Metrics, workers: Workers) -> Registry {
        Registry {
            rooms: Arc::new(DashMap::new()),
            next_room_id: AtomicU64::new(1),
            max_rooms: config.limits.max_rooms,
            max_participants: config.limits.max_participants_per_room,
            media_queue: 4096,
            router_config: RouterConfig {
                keyframe_request_interval: config.keyframe_request_interval(),
            },
            metrics,
            workers,
        }
    }

    /// Live rooms that have members, with their participant counts, sorted by name.
    pub fn list(&self) -> Vec<(String, usize)> {
        let mut rooms: Vec<(String, usize)> = self
            .rooms
            .iter()
            .map(|e| {
                (
                    e.key().clone(),
                    e.value().participants.load(Ordering::Relaxed),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        rooms.sort();
        rooms
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Joins `room`, creating it if needed. Retries when it races with the room closing.
    pub async fn join(
        &self,
        room: &str,
        participant: ParticipantId,
        name: String,
        events: mpsc::Sender<SessionEvent>,
        joined_at: std::time::Instant,
    ) -> Result<(RoomHandle, JoinAccepted), ClientError> {
        loop {
            let handle = self.get_or_create(room)?;
            let (reply, answer) = oneshot::channel();
            let command = RoomCommand::Join {
                participant,
                name: name.clone(),
                events: events.clone(),
                joined_at,
                reply,
            };
            if handle.commands.send(command).await.is_err() {
                self.forget(room, handle.id);
                continue;
            }
            match answer.await {
                Ok(Ok(accepted)) => return Ok((handle, accepted)),
                Ok(Err(refused)) => return Err(refused),
                // The room closed with our join still queued.
                Err(_) => self.forget(room, handle.id),
            }
        }
    }

    fn get_or_create(&self, room: &str) -> Result<RoomHandle, ClientError> {
        if let Some(h) = self.rooms.get(room) {
            return Ok(h.clone());
        }
        // Checked before taking the entry: `len` locks every shard, the entry holds one.
        if self.rooms.len() >= self.max_rooms {
            return Err(ClientError::new(
                ErrorCode::TooManyRooms,
                format!("the server has its maximum of {} rooms", self.max_rooms),
            ));
        }
        Ok(match self.rooms.entry(room.to_owned()) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(v) => {
                let task = RoomTask {
                    name: room.to_owned(),
                    id: self.next_room_id.fetch_add(1, Ordering::Relaxed),
                    max_participants: self.max_participants,
                    router_config: self.router_config.clone(),
                    metrics: self.metrics.clone(),
                    rooms: self.rooms.clone(),
                    placement: self.workers.place(),
                };
                let handle = task.spawn(self.media_queue);
                v.insert(handle.clone());
                handle
            }
        })
    }

    fn forget(&self, room: &str, id: u64) {
        self.rooms.remove_if(room, |_, h| h.id == id);
    }
}
