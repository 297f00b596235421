//! The room task: the single owner of a room's membership and its [`Router`]. Everything that
//! changes the room arrives as a [`RoomCommand`]; media arrives on a separate bounded channel
//! so that a burst of packets can never delay (or be delayed by) a join or leave.
//!
//! The room also writes what it fans out onto its subscribers' outgoing tracks (see
//! [`super::outgoing`] for why there is no queue and task per subscriber).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, Instrument};

use super::outgoing::{EgressCounters, SubscriberEgress};
use super::workers::Placement;
use crate::forward::{MediaKind, Output, ParticipantId, Router, RouterConfig, RtpPacket, TrackId};
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
        events: mpsc::UnboundedSender<SessionEvent>,
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
}

/// What the room tells a member's session.
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
    events: mpsc::UnboundedSender<SessionEvent>,
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
        let _ = self.events.send(SessionEvent::Send(message));
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
                    let now = state.members.len();
                    let before = participants.swap(now, Ordering::Relaxed);
                    // The worker's load counts participants (see workers.rs).
                    self.placement.load.add(now as i64 - before as i64);
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
        let producers_before = self.router.producer_count() as i64;
        let consumers_before = self.router.consumer_count() as i64;
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
                    member.egress.add(track, writer);
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
        }
        self.metrics
            .published_tracks
            .add(self.router.producer_count() as i64 - producers_before);
        self.metrics
            .subscriptions
            .add(self.router.consumer_count() as i64 - consumers_before);
    }

    fn handle_join(
        &mut self,
        participant: ParticipantId,
        name: String,
        events: mpsc::UnboundedSender<SessionEvent>,
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
        let Some(_member) = self.members.remove(&participant) else {
            return;
        };
        self.metrics.participants.dec();
        let tracks = self.router.remove_participant(participant);
        // The notice goes first, so clients know why the renegotiation that follows happens.
        for m in self.members.values_mut() {
            m.send(ServerMessage::ParticipantLeft {
                participant_id: participant,
                reason,
            });
            for track in &tracks {
                m.egress.remove(*track);
                let _ = m.events.send(SessionEvent::Unsubscribe { track: *track });
            }
        }
        info!(participant = %participant, ?reason, "left");
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
            let _ = m.events.send(SessionEvent::Subscribe(Subscription {
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
        for subscriber in self.router.remove_producer(track) {
            if let Some(m) = self.members.get_mut(&subscriber) {
                m.egress.remove(track);
                let _ = m.events.send(SessionEvent::Unsubscribe { track });
            }
        }
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
        self.router.handle_rtp(p.track, p.packet, now);
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
                        let _ = m.events.send(SessionEvent::RequestKeyframe { ssrc });
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
