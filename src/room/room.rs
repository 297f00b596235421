//! The room task: the single owner of a room's membership and its [`Router`]. Everything that
//! changes the room arrives as a [`RoomCommand`]; media arrives on a separate bounded channel
//! so that a burst of packets can never delay (or be delayed by) a join or leave.
//!
//! The room also writes what it fans out onto its subscribers' outgoing tracks (see
//! [`super::outgoing`] for why there is no queue and task per subscriber).
//!
//! The room never waits for a member. What it tells a member's session goes into a bounded
//! queue ([`SESSION_EVENT_QUEUE`] events) with `try_send`; a member whose queue is full has
//! stopped keeping up (typically a client that does not read its WebSocket, so its session is
//! stuck writing) and is removed from the room, as if it had timed out. Dropping or delaying
//! its events instead would leave its session out of step with the room (a subscription it
//! never heard of), and waiting would let one stuck client stall everyone's joins and leaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use super::outgoing::{EgressCounters, SubscriberEgress};
use super::workers::Placement;
use crate::forward::{
    Continuation, MediaKind, Output, ParticipantId, Router, RouterConfig, RtpPacket, TrackId,
};
use crate::metrics::Metrics;
use crate::rtc::{CodecSpec, EgressWriter};
use crate::signal::protocol::{
    ClientError, ErrorCode, LeaveReason, MemberInfo, ServerMessage, TrackInfo,
};
use prometheus::IntCounter;

/// Commands to a room. Replies, where there are any, come back on a oneshot.
pub enum RoomCommand {
    Join {
        participant: ParticipantId,
        name: String,
        events: mpsc::Sender<SessionEvent>,
        /// When the participant asked to join, for the join-to-first-media histogram.
        joined_at: Instant,
        reply: oneshot::Sender<Result<JoinAccepted, ClientError>>,
    },
    Leave {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    /// Media of a published track started arriving: others can subscribe now.
    TrackStarted {
        participant: ParticipantId,
        track: TrackInfo,
        codec: CodecSpec,
    },
    TrackEnded {
        participant: ParticipantId,
        track: TrackId,
    },
    Mute {
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
    },
    Chat {
        from: ParticipantId,
        text: String,
        to: Option<ParticipantId>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// The subscriber's connection is up and these outgoing tracks are negotiated and bound:
    /// forward to them through these writers.
    SubscriptionsReady {
        subscriber: ParticipantId,
        tracks: Vec<(TrackId, EgressWriter)>,
    },
    /// The subscriber lost these packets of its copy of `track` (its sequence numbers).
    Retransmit {
        subscriber: ParticipantId,
        track: TrackId,
        seqs: Vec<u16>,
    },
    KeyframeRequest {
        subscriber: ParticipantId,
        track: TrackId,
    },
    /// How the subscriber shows `track` (see `ClientMessage::TrackView`).
    TrackView {
        subscriber: ParticipantId,
        track: TrackId,
        visible: bool,
        height: Option<u16>,
    },
}

/// Capacity of each member's event queue (room → session). A healthy session empties it as
/// fast as it can write to its WebSocket; it only fills when the client stops reading (or its
/// link stalls) while the room stays busy. Sized for bursts far beyond a busy room's (a
/// hundred members joining at once send each member about five events apiece) while bounding
/// what one stuck client can pin: 1024 events, at most ~16 MiB even if all were maximal chat
/// messages, and only until the queue overflows and the member is removed.
pub const SESSION_EVENT_QUEUE: usize = 1024;

/// What the room tells a member's session. The session learns that the room removed it
/// (its queue overflowed) from the queue closing: that is the only time the room drops a
/// member's sender while the member's session still runs.
#[derive(Debug)]
pub enum SessionEvent {
    Send(ServerMessage),
    Subscribe(Subscription),
    Unsubscribe { track: TrackId },
    RequestKeyframe { ssrc: u32 },
}

/// A track the session must add to its peer connection, sending a copy of it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub publisher: ParticipantId,
    pub track: TrackInfo,
    pub codec: CodecSpec,
}

pub struct JoinAccepted {
    pub members: Vec<MemberInfo>,
    pub subscriptions: Vec<Subscription>,
}

/// One packet from a publisher's track, on its way into the room.
pub struct IngestPacket {
    pub track: TrackId,
    pub kind: MediaKind,
    /// The simulcast layer (0 = lowest; 0 for a single encoding).
    pub layer: u8,
    pub packet: RtpPacket,
    /// When webrtc-rs handed it to us (decrypted), for the forwarding delay.
    pub received_at: std::time::Instant,
}

#[derive(Clone)]
pub struct RoomHandle {
    pub(super) id: u64,
    pub commands: mpsc::Sender<RoomCommand>,
    pub media: mpsc::Sender<IngestPacket>,
    /// Members right now, written only by the room task; read for listings.
    pub participants: Arc<AtomicUsize>,
    /// The media worker the room runs on, where its members' peer connections run too.
    pub runtime: tokio::runtime::Handle,
}

struct Member {
    name: String,
    tracks: Vec<(TrackInfo, CodecSpec)>,
    events: mpsc::Sender<SessionEvent>,
    /// The event queue overflowed: the member is removed once the current command is done
    /// (not at once, since the room is usually iterating over its members when it notices).
    /// Atomic only because a `&Member` is held across awaits and must be `Sync`; the room
    /// task is its only reader and writer.
    lagging: AtomicBool,
    egress: SubscriberEgress,
}

impl Member {
    fn info(&self, id: ParticipantId) -> MemberInfo {
        MemberInfo {
            id,
            name: self.name.clone(),
            tracks: self.tracks.iter().map(|(t, _)| t.clone()).collect(),
        }
    }

    fn send(&self, message: ServerMessage) {
        self.notify(SessionEvent::Send(message));
    }

    /// Queues an event for the member's session without waiting.
    fn notify(&self, event: SessionEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.lagging.store(true, Ordering::Relaxed),
            // The session has ended; its `Leave` is on its way.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

pub(super) struct RoomTask {
    pub name: String,
    pub id: u64,
    pub max_participants: usize,
    pub router_config: RouterConfig,
    pub metrics: Metrics,
    pub rooms: Arc<DashMap<String, RoomHandle>>,
    pub placement: Placement,
}

/// Indexed by `MediaKind as usize`.
const KINDS: [MediaKind; 2] = [MediaKind::Audio, MediaKind::Video];

/// Packets handled per wake-up before looking at commands again.
const MEDIA_BATCH: usize = 64;
/// A room nobody joined within this time (its creator vanished) closes.
const EMPTY_ROOM_GRACE: Duration = Duration::from_secs(5);

impl RoomTask {
    pub fn spawn(self, media_queue: usize) -> RoomHandle {
        let (commands_tx, commands) = mpsc::channel(256);
        let (media_tx, media) = mpsc::channel(media_queue);
        let handle = RoomHandle {
            id: self.id,
            commands: commands_tx,
            media: media_tx,
            participants: Arc::new(AtomicUsize::new(0)),
            runtime: self.placement.runtime.clone(),
        };
        let span = tracing::info_span!("room", room = %self.name);
        let participants = handle.participants.clone();
        let runtime = self.placement.runtime.clone();
        runtime.spawn(
            crate::rtc::with_send_batching(self.run(commands, media, participants))
                .instrument(span),
        );
        handle
    }

    async fn run(
        self,
        mut commands: mpsc::Receiver<RoomCommand>,
        mut media: mpsc::Receiver<IngestPacket>,
        participants: Arc<AtomicUsize>,
    ) {
        let _task = self.metrics.task("room");
        self.metrics.rooms.inc();
        info!("room opened");
        let mut state = RoomState {
            members: HashMap::new(),
            router: Router::new(self.router_config.clone()),
            metrics: self.metrics.clone(),
            egress_counters: EgressCounters::new(&self.metrics),
            max_participants: self.max_participants,
            in_packets: KINDS.map(|k| {
                self.metrics
                    .rtp_packets
                    .with_label_values(&["in", k.as_str()])
            }),
            in_bytes: KINDS.map(|k| {
                self.metrics
                    .rtp_bytes
                    .with_label_values(&["in", k.as_str()])
            }),
        };
        let mut batch = Vec::with_capacity(MEDIA_BATCH);
        let mut received = Vec::with_capacity(MEDIA_BATCH);
        let forward_delay = state.metrics.forward_delay.clone();
        let empty_deadline = Instant::now() + EMPTY_ROOM_GRACE;
        loop {
            let keyframe_deadline = state.router.poll_timeout();
            tokio::select! {
                biased;
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    state.handle_command(command).await;
                    state.router.refresh_demand();
                    self.count_members(&state, &participants);
                    if state.members.is_empty() {
                        break;
                    }
                }
                n = media.recv_many(&mut batch, MEDIA_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let now = Instant::now();
                    for p in batch.drain(..) {
                        received.push(p.received_at);
                        state.handle_media(p, now);
                    }
                    state.router.refresh_demand_if_layers_appeared();
                }
                _ = sleep_until(keyframe_deadline), if keyframe_deadline.is_some() => {
                    state.router.handle_timeout(Instant::now());
                }
                _ = tokio::time::sleep_until(empty_deadline.into()), if state.members.is_empty() => {
                    break;
                }
            }
            // Write what this wake-up fanned out, then send it, batched. Unconstrained: every
            // write takes a lock inside webrtc-rs that counts against tokio's cooperative
            // budget (128 per poll), so a keyframe fanned out to 8 subscribers would be forced
            // to yield halfway and its packets, already written but not yet sent, would wait
            // a whole round of the scheduler. The wake-up is bounded (MEDIA_BATCH packets), and
            // the select above still yields when the budget says so.
            tokio::task::unconstrained(async {
                state.flush().await;
                crate::rtc::flush_sends().await;
            })
            .await;
            let sent = std::time::Instant::now();
            for at in received.drain(..) {
                forward_delay.observe(sent.saturating_duration_since(at).as_secs_f64());
            }
            // A keyframe request relayed by the flush can overflow a publisher's queue.
            if state.has_lagging() {
                let before = state.counts();
                state.remove_lagging();
                state.publish_counts(before);
                self.count_members(&state, &participants);
                if state.members.is_empty() {
                    break;
                }
            }
        }
        // Leave the registry first so no new join can reach us, then refuse what is queued:
        // a dropped reply tells the joining session to retry on a fresh room.
        self.rooms.remove_if(&self.name, |_, h| h.id == self.id);
        commands.close();
        while commands.try_recv().is_ok() {}
        let tracks = state.router.producer_count() as i64;
        state.metrics.published_tracks.sub(tracks);
        state
            .metrics
            .subscriptions
            .sub(state.router.consumer_count() as i64);
        state.metrics.participants.sub(state.members.len() as i64);
        // Give back the room's unit of load and its members'.
        let members = participants.swap(0, Ordering::Relaxed);
        self.placement.load.sub(1 + members as i64);
        self.metrics.rooms.dec();
        info!("room closed");
    }
}

impl RoomTask {
    /// Publishes the member count for listings and the worker's load (which counts
    /// participants, see workers.rs).
    fn count_members(&self, state: &RoomState, participants: &AtomicUsize) {
        let now = state.members.len();
        let before = participants.swap(now, Ordering::Relaxed);
        self.placement.load.add(now as i64 - before as i64);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

struct RoomState {
    members: HashMap<ParticipantId, Member>,
    router: Router,
    metrics: Metrics,
    egress_counters: EgressCounters,
    max_participants: usize,
    /// Inbound packet and byte counters by kind (audio, video), resolved once: label lookups
    /// hash strings, which the packet path should not.
    in_packets: [IntCounter; 2],
    in_bytes: [IntCounter; 2],
}

impl RoomState {
    async fn handle_command(&mut self, command: RoomCommand) {
        let before = self.counts();
        self.dispatch(command).await;
        self.remove_lagging();
        self.publish_counts(before);
    }

    /// Producers and consumers now, for [`Self::publish_counts`].
    fn counts(&self) -> (i64, i64) {
        (
            self.router.producer_count() as i64,
            self.router.consumer_count() as i64,
        )
    }

    /// Moves the track and subscription gauges by what changed since `before`.
    fn publish_counts(&self, before: (i64, i64)) {
        let (producers, consumers) = self.counts();
        self.metrics.published_tracks.add(producers - before.0);
        self.metrics.subscriptions.add(consumers - before.1);
    }

    fn has_lagging(&self) -> bool {
        self.members
            .values()
            .any(|m| m.lagging.load(Ordering::Relaxed))
    }

    /// Removes the members whose event queue overflowed, telling the others they timed out.
    /// Dropping a member's sender is what tells its session (see [`SessionEvent`]). Telling
    /// the others can overflow another queue in turn, hence the loop; it ends because every
    /// round removes at least one member.
    fn remove_lagging(&mut self) {
        loop {
            let lagging: Vec<ParticipantId> = self
                .members
                .iter()
                .filter(|(_, m)| m.lagging.load(Ordering::Relaxed))
                .map(|(id, _)| *id)
                .collect();
            if lagging.is_empty() {
                return;
            }
            for id in lagging {
                warn!(participant = %id, queue = SESSION_EVENT_QUEUE, "removing a participant whose session does not keep up with the room's events");
                self.metrics
                    .slow_client_disconnects
                    .with_label_values(&["event_queue_full"])
                    .inc();
                self.handle_leave(id, LeaveReason::TimedOut);
            }
        }
    }

    async fn dispatch(&mut self, command: RoomCommand) {
        match command {
            RoomCommand::Join {
                participant,
                name,
                events,
                joined_at,
                reply,
            } => self.handle_join(participant, name, events, joined_at, reply),
            RoomCommand::Leave {
                participant,
                reason,
            } => self.handle_leave(participant, reason),
            RoomCommand::TrackStarted {
                participant,
                track,
                codec,
            } => self.handle_track_started(participant, track, codec),
            RoomCommand::TrackEnded { participant, track } => {
                self.handle_track_ended(participant, track)
            }
            RoomCommand::Mute {
                participant,
                track,
                muted,
            } => self.handle_mute(participant, track, muted),
            RoomCommand::Chat {
                from,
                text,
                to,
                reply,
            } => {
                let _ = reply.send(self.handle_chat(from, text, to));
            }
            RoomCommand::SubscriptionsReady { subscriber, tracks } => {
                let Some(member) = self.members.get_mut(&subscriber) else {
                    return;
                };
                let now = Instant::now();
                for (track, writer) in tracks {
                    if let Some(ended) = member.egress.add(track, writer) {
                        self.router.continue_consumer(subscriber, track, ended);
                    }
                    self.router.handle_consumer_ready(subscriber, track, now);
                }
            }
            RoomCommand::Retransmit {
                subscriber,
                track,
                seqs,
            } => {
                if let Some(member) = self.members.get(&subscriber) {
                    member
                        .egress
                        .retransmit(track, &seqs, Instant::now(), &self.egress_counters)
                        .await;
                }
            }
            RoomCommand::KeyframeRequest { subscriber, track } => {
                self.router
                    .handle_keyframe_request(subscriber, track, Instant::now());
            }
            RoomCommand::TrackView {
                subscriber,
                track,
                visible,
                height,
            } => {
                self.router
                    .set_consumer_view(subscriber, track, visible, height, Instant::now());
            }
        }
    }

    fn handle_join(
        &mut self,
        participant: ParticipantId,
        name: String,
        events: mpsc::Sender<SessionEvent>,
        joined_at: Instant,
        reply: oneshot::Sender<Result<JoinAccepted, ClientError>>,
    ) {
        if self.members.len() >= self.max_participants {
            let _ = reply.send(Err(ClientError::new(
                ErrorCode::RoomFull,
                format!(
                    "the room has its maximum of {} participants",
                    self.max_participants
                ),
            )));
            return;
        }
        let mut members = Vec::with_capacity(self.members.len());
        let mut subscriptions = Vec::new();
        for (id, m) in &self.members {
            members.push(m.info(*id));
            for (track, codec) in &m.tracks {
                if self.router.add_consumer(participant, track.id) {
                    subscriptions.push(Subscription {
                        publisher: *id,
                        track: track.clone(),
                        codec: codec.clone(),
                    });
                }
            }
        }
        let member = Member {
            name,
            tracks: Vec::new(),
            events,
            lagging: AtomicBool::new(false),
            egress: SubscriberEgress::new(joined_at),
        };
        let info = member.info(participant);
        if reply
            .send(Ok(JoinAccepted {
                members,
                subscriptions,
            }))
            .is_err()
        {
            // The session went away while we were deciding: undo the consumers.
            self.router.remove_participant(participant);
            return;
        }
        for m in self.members.values() {
            m.send(ServerMessage::ParticipantJoined {
                participant: info.clone(),
            });
        }
        info!(participant = %participant, name = %info.name, "joined");
        self.members.insert(participant, member);
        self.metrics.participants.inc();
    }

    fn handle_leave(&mut self, participant: ParticipantId, reason: LeaveReason) {
        let Some(member) = self.members.remove(&participant) else {
            return;
        };
        self.metrics.participants.dec();
        let ended: Vec<_> = member
            .tracks
            .iter()
            .map(|(track, _)| (track.id, self.router.end_producer(track.id)))
            .collect();
        // What it consumed, and tracks announced but not flowing yet.
        self.router.remove_participant(participant);
        // The notice goes first, so clients know why the renegotiation that follows happens.
        for m in self.members.values() {
            m.send(ServerMessage::ParticipantLeft {
                participant_id: participant,
                reason,
            });
        }
        for (track, consumers) in ended {
            self.unsubscribe_all(track, consumers);
        }
        info!(participant = %participant, ?reason, "left");
    }

    /// Tells each consumer of an ended track to stop receiving it, keeping where its stream
    /// ended for the next track its transceiver carries.
    fn unsubscribe_all(&mut self, track: TrackId, consumers: Vec<(ParticipantId, Continuation)>) {
        for (subscriber, ended) in consumers {
            if let Some(m) = self.members.get_mut(&subscriber) {
                m.egress.park(track, ended);
                m.notify(SessionEvent::Unsubscribe { track });
            }
        }
    }

    fn handle_track_started(
        &mut self,
        participant: ParticipantId,
        track: TrackInfo,
        codec: CodecSpec,
    ) {
        let Some(member) = self.members.get_mut(&participant) else {
            return;
        };
        self.router.add_producer(
            track.id,
            participant,
            track.kind,
            crate::forward::Codec::from_mime(&codec.mime_type),
            codec.clock_rate,
        );
        member.tracks.push((track.clone(), codec.clone()));
        debug!(participant = %participant, track = %track.id, kind = ?track.kind, "published");
        for (id, m) in &self.members {
            if *id == participant || !self.router.add_consumer(*id, track.id) {
                continue;
            }
            m.send(ServerMessage::TrackPublished {
                participant_id: participant,
                track: track.clone(),
            });
            m.notify(SessionEvent::Subscribe(Subscription {
                publisher: participant,
                track: track.clone(),
                codec: codec.clone(),
            }));
        }
    }

    fn handle_track_ended(&mut self, participant: ParticipantId, track: TrackId) {
        let Some(member) = self.members.get_mut(&participant) else {
            return;
        };
        let before = member.tracks.len();
        member.tracks.retain(|(t, _)| t.id != track);
        if member.tracks.len() == before {
            return;
        }
        for (id, m) in &self.members {
            if *id != participant {
                m.send(ServerMessage::TrackUnpublished {
                    participant_id: participant,
                    track_id: track,
                });
            }
        }
        let consumers = self.router.end_producer(track);
        self.unsubscribe_all(track, consumers);
    }

    fn handle_mute(&mut self, participant: ParticipantId, track: TrackId, muted: bool) {
        let Some(member) = self.members.get_mut(&participant) else {
            return;
        };
        let Some((info, _)) = member.tracks.iter_mut().find(|(t, _)| t.id == track) else {
            // Not flowing yet: the session remembers the state and announces it on start.
            return;
        };
        info.muted = muted;
        for (id, m) in &self.members {
            if *id != participant {
                m.send(ServerMessage::TrackMuted {
                    participant_id: participant,
                    track_id: track,
                    muted,
                });
            }
        }
    }

    fn handle_chat(
        &mut self,
        from: ParticipantId,
        text: String,
        to: Option<ParticipantId>,
    ) -> Result<(), ClientError> {
        let Some(sender) = self.members.get(&from) else {
            return Ok(());
        };
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let message = ServerMessage::Chat {
            from,
            name: sender.name.clone(),
            text,
            ts,
            private: to.is_some(),
        };
        match to {
            Some(to) => {
                let Some(target) = self.members.get(&to) else {
                    return Err(ClientError::new(
                        ErrorCode::UnknownParticipant,
                        format!("no participant {to} in this room"),
                    ));
                };
                target.send(message.clone());
                if to != from {
                    sender.send(message);
                }
            }
            None => {
                for m in self.members.values() {
                    m.send(message.clone());
                }
            }
        }
        Ok(())
    }

    fn handle_media(&mut self, p: IngestPacket, now: Instant) {
        let k = p.kind as usize;
        self.in_packets[k].inc();
        self.in_bytes[k].inc_by(p.packet.wire_size() as u64);
        self.router
            .handle_layer_rtp(p.track, p.layer, p.packet, now);
    }

    /// Carries out what the router decided: writes forwarded packets, relays keyframe
    /// requests.
    async fn flush(&mut self) {
        // One clock reading for the wake-up's writes: they all leave in its one batched send.
        let now = Instant::now();
        while let Some(output) = self.router.poll_output() {
            match output {
                Output::Rtp {
                    subscriber,
                    track,
                    kind,
                    packet,
                } => {
                    let Some(m) = self.members.get_mut(&subscriber) else {
                        continue;
                    };
                    m.egress
                        .send(track, kind, packet, now, &self.egress_counters)
                        .await;
                }
                Output::RequestKeyframe {
                    publisher, ssrc, ..
                } => {
                    if let Some(m) = self.members.get(&publisher) {
                        m.notify(SessionEvent::RequestKeyframe { ssrc });
                    }
                }
                Output::LayersWanted {
                    publisher,
                    track,
                    max_layer,
                } => {
                    if let Some(m) = self.members.get(&publisher) {
                        let rids = crate::rtc::simulcast::SIMULCAST_RIDS;
                        let wanted = max_layer.map_or(0, |l| usize::from(l) + 1);
                        m.notify(SessionEvent::Send(ServerMessage::TrackLayers {
                            track_id: track,
                            rids: rids[..wanted.min(rids.len())]
                                .iter()
                                .map(|r| r.to_string())
                                .collect(),
                        }));
                    }
                }
            }
        }
        for (reason, n) in self.router.take_drops() {
            self.metrics
                .dropped_packets
                .with_label_values(&[reason.as_str()])
                .inc_by(n);
        }
    }
}
