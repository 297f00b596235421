//! One WebSocket session: the thin edge between a client and its room. It parses messages,
//! owns the participant's peer connection, and runs the negotiation.
//!
//! Negotiation has one rule that makes glare impossible: **the server is the only offerer**.
//! Whatever changes (a track to publish, a track to receive, one to remove) marks the session
//! dirty; when no offer is outstanding, the server creates one offer covering all changes and
//! waits for the client's answer before the next. webrtc-rs 0.17 cannot roll back a local
//! offer, so this is not a convenience: it is the only safe design with one peer connection.
//!
//! Nothing a client does or fails to do can make its session hold unbounded memory: the room's
//! events arrive on a bounded queue (the room removes a member that lets it overflow), every
//! write to the WebSocket has a deadline (`timeouts.session_write_ms`), and a client that
//! misses either is disconnected with close code 1008 `too-slow`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use futures::stream::{SplitSink, StreamExt};
use futures::SinkExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::protocol::{
    parse_client_message, ClientError, ClientMessage, ErrorCode, LeaveReason, MidBinding,
    PublishRequest, ServerMessage, TrackInfo, TrackSource, CLIENT_TYPES, PROTOCOL_VERSION,
};
use super::text;
use crate::forward::{MediaKind, ParticipantId, TrackId};
use crate::room::{
    IngestPacket, RoomCommand, RoomHandle, SessionEvent, Subscription, SESSION_EVENT_QUEUE,
};
use crate::rtc::{
    CodecSpec, Feedback, IncomingSlot, IncomingTrack, OutgoingTrack, Peer, PeerEvent, PeerState,
    RtcError,
};
use crate::server::AppState;

const MAX_ROOM_CHARS: usize = 64;
const MAX_CID_CHARS: usize = 64;
const MAX_CHAT_CHARS: usize = 4000;
/// The close frame's reason for a client that did not keep up (at most 123 bytes).
const TOO_SLOW: &str = "too-slow: the client did not read its messages in time";
/// The close frame's last chance: after a write deadline passed, the socket is probably still
/// stuck, so the goodbye gets a short bound of its own.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one WebSocket until it closes, the participant leaves, or a timeout removes it.
pub async fn run_session(socket: WebSocket, state: AppState) {
    let _task = state.metrics.task("session");
    let (sink, mut stream) = socket.split();
    let mut draining = std::pin::pin!(state.lifecycle.draining());
    let rate = state.config.limits.max_messages_per_second;
    let mut session = Session {
        state,
        sink,
        joined: None,
        last_heard_at: Instant::now(),
        budget: TokenBucket::new(rate as f64, rate as f64 * 4.0),
        negotiation_failed: false,
        stalled: false,
    };
    let end = loop {
        let deadline = session.next_deadline();
        let event = tokio::select! {
            message = stream.next() => Input::Socket(message),
            input = recv_joined(&mut session.joined) => input,
            _ = tokio::time::sleep_until(deadline.into()) => Input::Tick,
            _ = &mut draining => Input::Shutdown,
        };
        let end = session.handle(event).await;
        if let Some(end) = end.or_else(|| session.negotiation_failed.then_some(End::PeerLost)) {
            break end;
        }
        if session.stalled {
            // The write may have been stuck because the room had removed us meanwhile (a
            // removed member's session ends within one write timeout): count it once, as
            // what gave out first.
            let removed = session
                .joined
                .as_ref()
                .is_some_and(|j| j.room_events.is_closed());
            break End::TooSlow(if removed {
                Lag::EventQueueFull
            } else {
                Lag::WriteTimeout
            });
        }
    };
    session.finish(end).await;
}

enum Input {
    Socket(Option<Result<Message, axum::Error>>),
    Room(Option<SessionEvent>),
    Peer(Option<PeerEvent>),
    Tick,
    Shutdown,
}

/// Why a session ends, and what the others are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Left,
    SocketClosed,
    PeerLost,
    /// Connected, but its published media stopped arriving (`timeouts.media_silence_ms`): its
    /// media path is dead (its SRTP reader failed, or its browser stopped sending), and it is
    /// disconnected so that it reconnects, rather than stay in the room publishing nothing.
    MediaLost,
    TimedOut,
    ServerShutdown,
    /// The client did not keep up with what the server sends it.
    TooSlow(Lag),
}

/// What gave out when a client did not keep up; the `reason` label of
/// `plaza_slow_client_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lag {
    /// The room found this member's event queue full and removed it.
    EventQueueFull,
    /// One message could not be written within `timeouts.session_write_ms`.
    WriteTimeout,
}

impl End {
    fn reason(self) -> LeaveReason {
        match self {
            End::Left => LeaveReason::Left,
            End::SocketClosed | End::PeerLost | End::MediaLost => LeaveReason::Disconnected,
            // To the others, a client that stopped taking its messages stopped responding.
            End::TimedOut | End::TooSlow(_) => LeaveReason::TimedOut,
            End::ServerShutdown => LeaveReason::ServerShutdown,
        }
    }
}

/// Waits on the room and peer events, which exist only once joined; pending before that.
async fn recv_joined(joined: &mut Option<Joined>) -> Input {
    match joined.as_mut() {
        Some(j) => tokio::select! {
            event = j.room_events.recv() => Input::Room(event),
            event = j.peer_events.recv() => Input::Peer(event),
        },
        None => std::future::pending().await,
    }
}

struct Session {
    state: AppState,
    sink: SplitSink<WebSocket, Message>,
    joined: Option<Joined>,
    last_heard_at: Instant,
    budget: TokenBucket,
    /// The peer connection could not create an offer: it can never negotiate again, so the
    /// session ends (the client reconnects) rather than stay in the room unable to change.
    negotiation_failed: bool,
    /// A write missed its deadline: the session ends, and nothing more is written but a
    /// close frame.
    stalled: bool,
}

/// Messages a connection may send: `rate` per second on average, `burst` at once.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            refilled_at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Joined {
    id: ParticipantId,
    room: RoomHandle,
    peer: Peer,
    /// Bounded ([`SESSION_EVENT_QUEUE`]); closed by the room when it removes us.
    room_events: mpsc::Receiver<SessionEvent>,
    /// Unbounded, but bounded by construction: webrtc-rs's callbacks (src/rtc) send one event
    /// per local candidate (a handful, gathered once), per connection-state change (a few,
    /// paced by ICE's timers) and per published track that starts (at most
    /// `limits.max_tracks_per_participant` per negotiation, and negotiations wait for this
    /// session), and this session drains it continuously; every wait in between is bounded
    /// (writes by `timeouts.session_write_ms`). A bounded queue would have to drop state
    /// changes, or make webrtc-rs's callbacks wait on us.
    peer_events: mpsc::UnboundedReceiver<PeerEvent>,
    /// For the ingest sinks' [`PeerEvent::TrackResumed`].
    peer_events_tx: mpsc::UnboundedSender<PeerEvent>,
    publications: HashMap<TrackId, Publication>,
    /// Receiving transceivers whose publication ended, kept for the next publication of the
    /// same kind (a screen share started again), so that a participant's connection does not
    /// grow an m-line per share.
    idle_incoming: Vec<IdleIncoming>,
    subscriptions: HashMap<TrackId, Subscribed>,
    /// Outgoing transceivers whose track ended, kept for the next track of the same codec
    /// (see `Peer::park_outgoing`): never more than the most tracks received at once.
    idle_outgoing: Vec<IdleOutgoing>,
    negotiation: Negotiation,
    connected: bool,
    disconnected_since: Option<Instant>,
    span: tracing::Span,
}

struct Publication {
    cid: String,
    kind: MediaKind,
    source: TrackSource,
    muted: bool,
    slot: IncomingSlot,
    /// Which publication the slot's packets are for; shared with its ingest sink.
    ingest_to: TrackTarget,
    /// The codec the slot's media arrives in, once its ingest runs (from an earlier
    /// publication, when the slot is reused).
    ingest_codec: Option<CodecSpec>,
    /// The slot asks for simulcast layers.
    simulcast: bool,
    /// The layers whose ingest runs, one bit each (ingest outlives a publication on its slot).
    ingesting_layers: u8,
    started: bool,
    /// Since when this track is expected to carry media: it started, or was unmuted.
    live_since: Option<Instant>,
}

/// A receiving transceiver between two publications.
struct IdleIncoming {
    kind: MediaKind,
    simulcast: bool,
    slot: IncomingSlot,
    ingest_to: TrackTarget,
    ingest_codec: Option<CodecSpec>,
    ingesting_layers: u8,
}

struct Subscribed {
    publisher: ParticipantId,
    kind: MediaKind,
    codec: CodecSpec,
    out: OutgoingTrack,
    feedback_to: TrackTarget,
    /// Part of an applied offer/answer, so its sender is bound.
    negotiated: bool,
    /// The room has been told it can forward to it.
    reported_ready: bool,
}

/// An outgoing transceiver between two tracks.
struct IdleOutgoing {
    kind: MediaKind,
    codec: CodecSpec,
    out: OutgoingTrack,
    feedback_to: TrackTarget,
}

/// The track a recycled transceiver is about now, or none while it is idle: for an outgoing
/// one, whose RTCP feedback (NACKs, keyframe requests) it is; for an incoming one, whose media.
/// Shared with the transceiver's reader, which lives as long as the transceiver.
#[derive(Clone, Default)]
struct TrackTarget(Arc<AtomicU64>);

impl TrackTarget {
    fn set(&self, track: Option<TrackId>) {
        self.0.store(track.map_or(0, |t| t.0), Ordering::Relaxed);
    }

    /// Track ids start at 1: 0 means idle.
    fn get(&self) -> Option<TrackId> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            id => Some(TrackId(id)),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Negotiation {
    Stable { dirty: bool },
    AwaitingAnswer { dirty: bool, offered: Vec<TrackId> },
}

impl Session {
    fn next_deadline(&self) -> Instant {
        let t = &self.state.config.timeouts;
        let idle_at = self.last_heard_at + Duration::from_millis(t.session_idle_ms);
        let Some(j) = self.joined.as_ref() else {
            return idle_at;
        };
        let lost_at = j
            .disconnected_since
            .map(|since| since + Duration::from_millis(t.peer_disconnected_ms));
        let silence = self.state.config.media_silence_limit();
        [Some(idle_at), lost_at, j.media_silent_at(silence)]
            .into_iter()
            .flatten()
            .min()
            .expect("the idle deadline is always there")
    }

    async fn handle(&mut self, input: Input) -> Option<End> {
        match input {
            Input::Socket(None) | Input::Socket(Some(Err(_))) => Some(End::SocketClosed),
            Input::Socket(Some(Ok(message))) => {
                self.last_heard_at = Instant::now();
                self.handle_frame(message).await
            }
            // The room drops a member's sender only when it removes the member for letting its
            // queue overflow; the events still queued are moot then, so the check comes first.
            Input::Room(None) => Some(End::TooSlow(Lag::EventQueueFull)),
            Input::Room(Some(_))
                if self
                    .joined
                    .as_ref()
                    .is_some_and(|j| j.room_events.is_closed()) =>
            {
                Some(End::TooSlow(Lag::EventQueueFull))
            }
            Input::Room(Some(event)) => {
                self.handle_room_event(event).await;
                // Changes that arrive together go into one offer.
                if self
                    .joined
                    .as_ref()
                    .is_some_and(|j| j.room_events.is_empty())
                {
                    self.negotiate().await;
                }
                None
            }
            Input::Peer(None) => Some(End::PeerLost),
            Input::Peer(Some(event)) => {
                let end = self.handle_peer_event(event).await;
                self.negotiate().await;
                end
            }
            Input::Tick => self.handle_tick(),
            Input::Shutdown => {
                self.send(ServerMessage::ServerShutdown {
                    message: "the server is shutting down; reconnect to rejoin".into(),
                })
                .await;
                Some(End::ServerShutdown)
            }
        }
    }

    fn handle_tick(&mut self) -> Option<End> {
        let now = Instant::now();
        let t = &self.state.config.timeouts;
        if now.duration_since(self.last_heard_at) >= Duration::from_millis(t.session_idle_ms) {
            return Some(End::TimedOut);
        }
        let lost = self
            .joined
            .as_ref()
            .and_then(|j| j.disconnected_since)
            .is_some_and(|since| {
                now.duration_since(since) >= Duration::from_millis(t.peer_disconnected_ms)
            });
        if lost {
            return Some(End::TimedOut);
        }
        let silent = self
            .joined
            .as_ref()
            .and_then(|j| j.media_silent_at(self.state.config.media_silence_limit()))
            .is_some_and(|at| now >= at);
        silent.then_some(End::MediaLost)
    }

    async fn handle_frame(&mut self, message: Message) -> Option<End> {
        match message {
            Message::Close(_) => return Some(End::SocketClosed),
            // Control frames: tungstenite answers pings itself and keeps at most one pong
            // pending, so they cost no queue; they only keep the session alive.
            Message::Ping(_) | Message::Pong(_) => return None,
            Message::Text(_) | Message::Binary(_) => {}
        }
        // Every data frame spends from the budget, binary ones included: each costs an error
        // reply, so a binary flood must be throttled like a text one.
        if !self.budget.take(Instant::now()) {
            let rate = self.state.config.limits.max_messages_per_second;
            self.send_error(ClientError::new(
                ErrorCode::RateLimited,
                format!("more than {rate} messages per second; this one was dropped"),
            ))
            .await;
            return None;
        }
        let text = match message {
            Message::Text(text) => text,
            _ => {
                self.send_error(ClientError::new(
                    ErrorCode::MalformedMessage,
                    "binary frames are not part of the protocol; send JSON text",
                ))
                .await;
                return None;
            }
        };
        let limit = self.state.config.limits.max_message_bytes;
        if text.len() > limit {
            self.send_error(ClientError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes exceeds the limit of {limit}",
                    text.len()
                ),
            ))
            .await;
            return None;
        }
        let message = match parse_client_message(&text) {
            Ok(m) => m,
            Err(e) => {
                let label = if e.code == ErrorCode::InvalidMessage {
                    e.request.clone().unwrap_or_default()
                } else {
                    "invalid".to_owned()
                };
                self.count_message(label_for(&label));
                self.send_error(e).await;
                return None;
            }
        };
        let kind = message.type_name();
        self.count_message(kind);
        match self.handle_message(message).await {
            Ok(end) => {
                self.negotiate().await;
                end
            }
            Err(mut e) => {
                e.request.get_or_insert_with(|| kind.to_owned());
                self.send_error(e).await;
                self.negotiate().await;
                None
            }
        }
    }

    fn count_message(&self, kind: &str) {
        self.state
            .metrics
            .signal_messages
            .with_label_values(&[kind])
            .inc();
    }

    async fn handle_message(&mut self, message: ClientMessage) -> Result<Option<End>, ClientError> {
        if let ClientMessage::Ping { id } = message {
            self.send(ServerMessage::Pong { id }).await;
            return Ok(None);
        }
        if let ClientMessage::Join {
            version,
            room,
            name,
            publish,
        } = message
        {
            if self.joined.is_some() {
                return Err(ClientError::new(
                    ErrorCode::AlreadyJoined,
                    "this connection has already joined a room; open another to join again",
                ));
            }
            self.join(version, room, name, publish).await?;
            return Ok(None);
        }
        let Some(j) = self.joined.as_mut() else {
            return Err(ClientError::new(
                ErrorCode::NotJoined,
                "send \"join\" before anything else",
            ));
        };
        let max_tracks = self.state.config.limits.max_tracks_per_participant;
        match message {
            ClientMessage::Join { .. } | ClientMessage::Ping { .. } => {
                unreachable!("handled above")
            }
            ClientMessage::Leave {} => return Ok(Some(End::Left)),
            ClientMessage::Publish { tracks } => {
                validate_publish(
                    &tracks,
                    j.publications.values().map(|p| p.cid.as_str()),
                    max_tracks,
                )?;
                j.add_publications(&tracks, &self.state).await?;
            }
            ClientMessage::Unpublish { track_id } => {
                let Some(p) = j.publications.remove(&track_id) else {
                    return Err(unknown_track(track_id));
                };
                p.ingest_to.set(None);
                j.peer.stop_incoming(&p.slot).await;
                j.idle_incoming.push(IdleIncoming {
                    kind: p.kind,
                    simulcast: p.simulcast,
                    slot: p.slot,
                    ingest_to: p.ingest_to,
                    ingest_codec: p.ingest_codec,
                    ingesting_layers: p.ingesting_layers,
                });
                j.negotiation.mark_dirty();
                if p.started {
                    j.tell_room(RoomCommand::TrackEnded {
                        participant: j.id,
                        track: track_id,
                    })
                    .await;
                }
            }
            ClientMessage::Mute { track_id, muted } => {
                let Some(p) = j.publications.get_mut(&track_id) else {
                    return Err(unknown_track(track_id));
                };
                p.muted = muted;
                if !muted && p.started {
                    p.live_since = Some(Instant::now());
                }
                if p.started {
                    j.tell_room(RoomCommand::Mute {
                        participant: j.id,
                        track: track_id,
                        muted,
                    })
                    .await;
                }
            }
            ClientMessage::TrackView {
                track_id,
                visible,
                height,
            } => {
                // A view of a track that has just gone is a race, not an error: ignored.
                if j.subscriptions.contains_key(&track_id) {
                    j.tell_room(RoomCommand::TrackView {
                        subscriber: j.id,
                        track: track_id,
                        visible,
                        height,
                    })
                    .await;
                }
            }
            ClientMessage::Answer { sdp } => {
                let Negotiation::AwaitingAnswer { dirty, offered } = &j.negotiation else {
                    return Err(ClientError::new(
                        ErrorCode::NoOfferPending,
                        "there is no outstanding offer to answer",
                    ));
                };
                let (dirty, offered) = (*dirty, offered.clone());
                // A rejected answer leaves the offer outstanding: the client may answer again.
                if let Err(e) = j.peer.apply_answer(sdp).await {
                    if !j.peer.awaiting_answer() {
                        // The stack consumed the offer before failing: start over with a
                        // fresh offer rather than wait for an answer that can never apply.
                        warn!(parent: &j.span, error = %e, "an answer failed after consuming the offer");
                        j.negotiation = Negotiation::Stable { dirty: true };
                    }
                    return Err(ClientError::new(
                        ErrorCode::InvalidSdp,
                        format!("answer rejected: {e}"),
                    ));
                }
                j.negotiation = Negotiation::Stable { dirty };
                for track in offered {
                    if let Some(s) = j.subscriptions.get_mut(&track) {
                        s.negotiated = true;
                    }
                }
                j.report_ready().await;
            }
            ClientMessage::Candidate { candidate } => {
                let Some(c) = candidate else {
                    return Ok(None); // end of candidates: nothing to do for ICE here
                };
                if c.candidate.is_empty() {
                    return Ok(None);
                }
                j.peer
                    .add_remote_candidate(c)
                    .map_err(|e| ClientError::new(ErrorCode::InvalidCandidate, e.to_string()))?;
            }
            ClientMessage::Chat { text, to } => {
                check_chat(&text)?;
                let (reply, answer) = oneshot::channel();
                j.tell_room(RoomCommand::Chat {
                    from: j.id,
                    text,
                    to,
                    reply,
                })
                .await;
                if let Ok(Err(e)) = answer.await {
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    async fn join(
        &mut self,
        version: u32,
        room: String,
        name: String,
        publish: Vec<PublishRequest>,
    ) -> Result<(), ClientError> {
        if self.state.lifecycle.is_draining() {
            return Err(ClientError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down and takes no new joins",
            ));
        }
        if version != PROTOCOL_VERSION {
            return Err(ClientError::new(
                ErrorCode::UnsupportedVersion,
                format!("this server speaks protocol version {PROTOCOL_VERSION}"),
            ));
        }
        let limits = &self.state.config.limits;
        let room = room.trim().to_owned();
        check_text("room", &room, MAX_ROOM_CHARS)?;
        let name = name.trim().to_owned();
        check_text("name", &name, limits.max_name_chars)?;
        validate_publish(
            &publish,
            std::iter::empty(),
            limits.max_tracks_per_participant,
        )?;

        let joined_at = Instant::now();
        let id = self.state.ids.participant();
        let span = tracing::info_span!("participant", room = %room, participant = %id);
        let (events_tx, room_events) = mpsc::channel(SESSION_EVENT_QUEUE);
        let (handle, accepted) = self
            .state
            .registry
            .join(&room, id, name.clone(), events_tx, joined_at)
            .await?;
        // The peer connection runs on its room's media worker.
        let (peer_tx, peer_events) = mpsc::unbounded_channel();
        let peer = match self
            .state
            .rtc
            .new_peer(peer_tx.clone(), handle.runtime.clone())
            .await
        {
            Ok(peer) => peer,
            Err(e) => {
                warn!(error = %e, "cannot create a peer connection");
                let _ = handle
                    .commands
                    .send(RoomCommand::Leave {
                        participant: id,
                        reason: LeaveReason::Disconnected,
                    })
                    .await;
                return Err(ClientError::new(
                    ErrorCode::Internal,
                    "the server could not set up media",
                ));
            }
        };
        let mut j = Joined {
            id,
            room: handle,
            peer,
            room_events,
            peer_events,
            peer_events_tx: peer_tx,
            publications: HashMap::new(),
            idle_incoming: Vec::new(),
            subscriptions: HashMap::new(),
            idle_outgoing: Vec::new(),
            negotiation: Negotiation::Stable { dirty: false },
            connected: false,
            disconnected_since: None,
            span,
        };
        for s in accepted.subscriptions {
            j.subscribe(s, &self.state).await;
        }
        let publish_result = j.add_publications(&publish, &self.state).await;
        info!(parent: &j.span, name = %name, "joined");
        self.joined = Some(j);
        self.send(ServerMessage::Joined {
            version: PROTOCOL_VERSION,
            room,
            participant_id: id,
            members: accepted.members,
            ice_servers: self.state.config.ice_servers.clone(),
        })
        .await;
        publish_result
    }

    async fn handle_room_event(&mut self, event: SessionEvent) {
        let Some(j) = self.joined.as_mut() else {
            return;
        };
        match event {
            SessionEvent::Send(message) => self.send(message).await,
            SessionEvent::Subscribe(s) => j.subscribe(s, &self.state).await,
            SessionEvent::Unsubscribe { track } => {
                if let Some(s) = j.subscriptions.remove(&track) {
                    s.feedback_to.set(None);
                    j.peer.park_outgoing(&s.out).await;
                    j.idle_outgoing.push(IdleOutgoing {
                        kind: s.kind,
                        codec: s.codec,
                        out: s.out,
                        feedback_to: s.feedback_to,
                    });
                    j.negotiation.mark_dirty();
                }
            }
            SessionEvent::RequestKeyframe { ssrc } => j.peer.request_keyframe(ssrc).await,
        }
    }

    async fn handle_peer_event(&mut self, event: PeerEvent) -> Option<End> {
        let j = self.joined.as_mut()?;
        match event {
            PeerEvent::LocalCandidate(candidate) => {
                self.send(ServerMessage::Candidate { candidate }).await;
            }
            PeerEvent::State(state) => {
                debug!(parent: &j.span, ?state, "peer connection state");
                match state {
                    PeerState::Connected => {
                        j.connected = true;
                        j.disconnected_since = None;
                        j.report_ready().await;
                    }
                    PeerState::Disconnected => {
                        j.disconnected_since.get_or_insert_with(Instant::now);
                    }
                    PeerState::Failed | PeerState::Closed => return Some(End::PeerLost),
                    PeerState::Connecting => {}
                }
            }
            PeerEvent::Track(incoming) => j.start_publication(incoming, &self.state).await,
            PeerEvent::TrackResumed { mid } => j.resume_publication(&mid).await,
        }
        None
    }

    async fn negotiate(&mut self) {
        let Some(j) = self.joined.as_mut() else {
            return;
        };
        let Negotiation::Stable { dirty: true } = j.negotiation else {
            return;
        };
        if !j.room_events.is_empty() {
            // Room changes are waiting (a departed track's removal, say, whose event the client
            // already has): the offer waits for them, and is made when the queue is drained.
            return;
        }
        let sdp = match j.peer.create_offer().await {
            Ok(sdp) => sdp,
            Err(e) => {
                warn!(parent: &j.span, error = %e, "cannot create an offer: ending the session");
                self.negotiation_failed = true;
                self.send_error(ClientError::new(
                    ErrorCode::Internal,
                    "the server can no longer renegotiate this connection; reconnect to rejoin",
                ))
                .await;
                return;
            }
        };
        let mut mids = Vec::new();
        for (track_id, p) in &j.publications {
            if let Some(mid) = p.slot.mid() {
                mids.push(MidBinding::Send {
                    mid,
                    cid: p.cid.clone(),
                    track_id: *track_id,
                    kind: p.kind,
                });
            }
        }
        let mut offered = Vec::new();
        for (track_id, s) in &j.subscriptions {
            if let Some(mid) = s.out.mid() {
                offered.push(*track_id);
                mids.push(MidBinding::Recv {
                    mid,
                    participant_id: s.publisher,
                    track_id: *track_id,
                    kind: s.kind,
                });
            }
        }
        mids.sort_by_key(|m| match m {
            MidBinding::Send { mid, .. } | MidBinding::Recv { mid, .. } => {
                mid.parse::<u64>().unwrap_or(u64::MAX)
            }
        });
        j.negotiation = Negotiation::AwaitingAnswer {
            dirty: false,
            offered,
        };
        self.send(ServerMessage::Offer { sdp, mids }).await;
    }

    async fn send(&mut self, message: ServerMessage) {
        if self.stalled {
            return;
        }
        let text = serde_json::to_string(&message).expect("server messages always serialize");
        let write = self.sink.send(Message::Text(text.into()));
        match tokio::time::timeout(self.state.config.session_write_timeout(), write).await {
            Ok(Ok(())) => {}
            // The socket is gone; the read side will notice and end the session.
            Ok(Err(_)) => {}
            // The client is not reading: its socket buffers are full. Waiting longer would
            // stop this session from taking the room's events, so it ends instead.
            Err(_) => self.stalled = true,
        }
    }

    async fn send_error(&mut self, e: ClientError) {
        self.state
            .metrics
            .signal_errors
            .with_label_values(&[e.code.as_str()])
            .inc();
        debug!(code = e.code.as_str(), message = %e.message, "client error");
        self.send(e.into_message()).await;
    }

    async fn finish(mut self, end: End) {
        if let End::MediaLost = end {
            self.send_error(ClientError::new(
                ErrorCode::MediaTimeout,
                format!(
                    "no media arrived on your published tracks for {} s; reconnect to rejoin",
                    self.state.config.media_silence_limit().as_secs_f64()
                ),
            ))
            .await;
        }
        // The room counts the overflows it decides; write timeouts are counted here.
        if end == End::TooSlow(Lag::WriteTimeout) {
            self.state
                .metrics
                .slow_client_disconnects
                .with_label_values(&["write_timeout"])
                .inc();
        }
        if let Some(j) = self.joined.take() {
            info!(parent: &j.span, ?end, "session ended");
            j.tell_room(RoomCommand::Leave {
                participant: j.id,
                reason: end.reason(),
            })
            .await;
            j.peer.close().await;
        } else if let End::TooSlow(_) = end {
            info!(?end, "session ended");
        }
        // A client that does not read must not hold this task: the goodbye is bounded too.
        let bound = self.state.config.session_write_timeout().min(CLOSE_TIMEOUT);
        let sink = &mut self.sink;
        let _ = tokio::time::timeout(bound, async move {
            if let End::TooSlow(_) = end {
                let frame = CloseFrame {
                    code: close_code::POLICY,
                    reason: TOO_SLOW.into(),
                };
                sink.send(Message::Close(Some(frame))).await?;
            }
            sink.close().await
        })
        .await;
    }
}

impl Negotiation {
    fn mark_dirty(&mut self) {
        match self {
            Negotiation::Stable { dirty } | Negotiation::AwaitingAnswer { dirty, .. } => {
                *dirty = true
            }
        }
    }
}

impl Joined {
    /// When this publisher's media path counts as dead if nothing arrives before: the silence
    /// limit after the last packet, or after its latest unmuted track went live.
    fn media_silent_at(&self, limit: Duration) -> Option<Instant> {
        if !self.connected {
            return None;
        }
        let live_since = self
            .publications
            .values()
            .filter(|p| p.started && !p.muted)
            .filter_map(|p| p.live_since)
            .max()?;
        let heard = self
            .peer
            .media_heard_at()
            .map_or(live_since, |h| h.max(live_since));
        Some(heard + limit)
    }

    async fn tell_room(&self, command: RoomCommand) {
        // The room outlives its members; a closed channel means the server is shutting down.
        let _ = self.room.commands.send(command).await;
    }

    async fn add_publications(
        &mut self,
        requests: &[PublishRequest],
        state: &AppState,
    ) -> Result<(), ClientError> {
        for r in requests {
            let simulcast = r.simulcast && r.kind == MediaKind::Video;
            let idle = self
                .idle_incoming
                .iter()
                .position(|i| i.kind == r.kind && i.simulcast == simulcast);
            let (slot, ingest_to, ingest_codec, ingesting_layers) = match idle {
                Some(i) => {
                    let idle = self.idle_incoming.swap_remove(i);
                    self.peer.reuse_incoming(&idle.slot).await.map_err(|e| {
                        warn!(parent: &self.span, error = %e, "cannot reuse a receiving transceiver");
                        ClientError::new(ErrorCode::Internal, "the server could not add the track")
                    })?;
                    (
                        idle.slot,
                        idle.ingest_to,
                        idle.ingest_codec,
                        idle.ingesting_layers,
                    )
                }
                None => {
                    let slot = self.peer.add_incoming(r.kind, simulcast).await.map_err(|e| {
                        warn!(parent: &self.span, error = %e, "cannot add a receiving transceiver");
                        ClientError::new(ErrorCode::Internal, "the server could not add the track")
                    })?;
                    (slot, TrackTarget::default(), None, 0)
                }
            };
            let track_id = state.ids.track();
            ingest_to.set(Some(track_id));
            self.publications.insert(
                track_id,
                Publication {
                    cid: r.cid.clone(),
                    kind: r.kind,
                    source: r.source,
                    muted: r.muted,
                    slot,
                    ingest_to,
                    ingest_codec,
                    simulcast,
                    ingesting_layers,
                    started: false,
                    live_since: None,
                },
            );
            self.negotiation.mark_dirty();
        }
        Ok(())
    }

    async fn start_publication(&mut self, incoming: IncomingTrack, state: &AppState) {
        let layer_bit = 1u8 << incoming.layer.min(7);
        let Some((&track_id, p)) = self.publications.iter_mut().find(|(_, p)| {
            p.ingesting_layers & layer_bit == 0
                && p.slot.mid().as_deref() == Some(incoming.mid.as_str())
        }) else {
            debug!(parent: &self.span, mid = %incoming.mid, "media on a transceiver nobody published on");
            return;
        };
        if incoming.kind != p.kind || (incoming.layer > 0 && !p.simulcast) {
            return;
        }
        let first_layer = p.ingesting_layers == 0;
        p.ingesting_layers |= layer_bit;
        p.ingest_codec = Some(incoming.codec.clone());
        let layer = incoming.layer;
        let target = p.ingest_to.clone();
        let (events, mid) = (self.peer_events_tx.clone(), incoming.mid.clone());
        let media = self.room.media.clone();
        let kind = p.kind;
        let overflow = state
            .metrics
            .dropped_packets
            .with_label_values(&["room_queue_full"]);
        // The publication this transceiver's packets were last for: when a reused transceiver's
        // media comes back for the next one, the session hears of it once.
        let mut current = track_id;
        incoming.start_ingest(
            move |packet| {
                let Some(track) = target.get() else {
                    return true; // between two publications: nobody's
                };
                if track != current {
                    current = track;
                    let _ = events.send(PeerEvent::TrackResumed { mid: mid.clone() });
                }
                match media.try_send(IngestPacket {
                    track,
                    kind,
                    layer,
                    packet,
                    received_at: std::time::Instant::now(),
                }) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        overflow.inc();
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            },
            (
                state.metrics.task("ingest"),
                state.metrics.task("ingest_rtcp"),
            ),
        );
        if first_layer {
            self.announce_publication(track_id).await;
        }
    }

    /// Media came back on a reused receiving transceiver, for the publication it now carries.
    async fn resume_publication(&mut self, mid: &str) {
        let found = self
            .publications
            .iter()
            .find(|(_, p)| !p.started && p.slot.mid().as_deref() == Some(mid))
            .map(|(id, _)| *id);
        if let Some(track_id) = found {
            self.announce_publication(track_id).await;
        }
    }

    /// The publication's media flows: the room forwards it from now on.
    async fn announce_publication(&mut self, track_id: TrackId) {
        let Some(p) = self.publications.get_mut(&track_id) else {
            return;
        };
        let Some(codec) = p.ingest_codec.clone() else {
            return;
        };
        p.started = true;
        p.live_since = Some(Instant::now());
        let info = TrackInfo {
            id: track_id,
            kind: p.kind,
            source: p.source,
            muted: p.muted,
        };
        debug!(parent: &self.span, track = %track_id, codec = %codec.mime_type, "media started");
        self.tell_room(RoomCommand::TrackStarted {
            participant: self.id,
            track: info,
            codec,
        })
        .await;
    }

    async fn subscribe(&mut self, s: Subscription, state: &AppState) {
        let track = s.track.id;
        let idle = self
            .idle_outgoing
            .iter()
            .position(|i| i.kind == s.track.kind && i.codec == s.codec);
        let (out, feedback_to) = match idle {
            Some(i) => {
                let idle = self.idle_outgoing.swap_remove(i);
                if let Err(e) = self.peer.reuse_outgoing(&idle.out).await {
                    warn!(parent: &self.span, track = %track, error = %e, "cannot reuse a transceiver");
                    return;
                }
                (idle.out, idle.feedback_to)
            }
            None => match self.add_outgoing(&s, state).await {
                Ok(added) => added,
                Err(e) => {
                    warn!(parent: &self.span, track = %track, error = %e, "cannot subscribe");
                    return;
                }
            },
        };
        feedback_to.set(Some(track));
        self.subscriptions.insert(
            track,
            Subscribed {
                publisher: s.publisher,
                kind: s.track.kind,
                codec: s.codec,
                out,
                feedback_to,
                negotiated: false,
                reported_ready: false,
            },
        );
        self.negotiation.mark_dirty();
    }

    /// A new outgoing transceiver for `s`, whose RTCP feedback goes to the room about
    /// whichever track it carries at the time.
    async fn add_outgoing(
        &self,
        s: &Subscription,
        state: &AppState,
    ) -> Result<(OutgoingTrack, TrackTarget), RtcError> {
        let feedback_to = TrackTarget::default();
        let target = feedback_to.clone();
        let commands = self.room.commands.clone();
        let subscriber = self.id;
        let metrics = state.metrics.clone();
        let feedback = move |f: Feedback| {
            let Some(track) = target.get() else {
                return; // idle: about a track that ended
            };
            let label = match f {
                Feedback::Pli => "pli",
                Feedback::Fir => "fir",
                Feedback::Nack(seqs) => {
                    metrics
                        .nacks_received
                        .with_label_values(&["subscriber"])
                        .inc();
                    // Dropped when the room is busy: the subscriber asks again.
                    let _ = commands.try_send(RoomCommand::Retransmit {
                        subscriber,
                        track,
                        seqs,
                    });
                    return;
                }
            };
            metrics
                .keyframe_requests
                .with_label_values(&["in", label])
                .inc();
            // Throttled downstream anyway: if the room is busy, dropping a request is fine.
            let _ = commands.try_send(RoomCommand::KeyframeRequest { subscriber, track });
        };
        let out = self
            .peer
            .add_outgoing(
                s.track.id.to_string(),
                s.publisher.to_string(),
                s.track.kind,
                &s.codec,
                feedback,
                state.metrics.task("egress_rtcp"),
            )
            .await?;
        Ok((out, feedback_to))
    }

    /// Tells the room which subscriptions can receive media now: negotiated and connected.
    async fn report_ready(&mut self) {
        if !self.connected {
            return;
        }
        let mut ready = Vec::new();
        for (track, s) in self.subscriptions.iter_mut() {
            if s.negotiated && !s.reported_ready {
                s.reported_ready = true;
                ready.push((*track, s.out.writer()));
            }
        }
        if !ready.is_empty() {
            self.tell_room(RoomCommand::SubscriptionsReady {
                subscriber: self.id,
                tracks: ready,
            })
            .await;
        }
    }
}

/// Checks publish requests against the limit and the cids already in use.
fn validate_publish<'a>(
    requests: &[PublishRequest],
    published: impl Iterator<Item = &'a str> + Clone,
    max: usize,
) -> Result<(), ClientError> {
    if published.clone().count() + requests.len() > max {
        return Err(ClientError::new(
            ErrorCode::TooManyTracks,
            format!("at most {max} published tracks per participant"),
        ));
    }
    for (i, r) in requests.iter().enumerate() {
        if requests[..i].iter().any(|other| other.cid == r.cid)
            || published.clone().any(|cid| cid == r.cid)
        {
            return Err(ClientError::new(
                ErrorCode::InvalidMessage,
                format!("cid {:?} is already in use", r.cid),
            ));
        }
        let chars = r.cid.chars().count();
        if chars == 0 || chars > MAX_CID_CHARS {
            return Err(ClientError::new(
                ErrorCode::InvalidMessage,
                format!("cid must have 1 to {MAX_CID_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// A display name or room name: 1 to `max_chars` characters, none of them hidden (see
/// [`text`] for which and why).
fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), ClientError> {
    let chars = value.chars().count();
    if chars == 0 || chars > max_chars {
        return Err(ClientError::new(
            ErrorCode::InvalidMessage,
            format!("{field} must have 1 to {max_chars} printable characters"),
        ));
    }
    text::check_label(value).map_err(|r| {
        ClientError::new(
            ErrorCode::InvalidMessage,
            format!(
                "{field} must not contain control, format, bidi or zero-width characters: {}",
                r.describe()
            ),
        )
    })
}

/// A chat message: 1 to [`MAX_CHAT_CHARS`] characters; line breaks are `\n` only.
fn check_chat(value: &str) -> Result<(), ClientError> {
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_CHAT_CHARS {
        return Err(ClientError::new(
            ErrorCode::InvalidMessage,
            format!("chat text must have 1 to {MAX_CHAT_CHARS} characters"),
        ));
    }
    text::check_chat(value).map_err(|r| {
        ClientError::new(
            ErrorCode::InvalidMessage,
            format!(
                "chat text must not contain control (other than \\n), bidi or invisible \
                 format characters: {}",
                r.describe()
            ),
        )
    })
}

fn unknown_track(track: TrackId) -> ClientError {
    ClientError::new(
        ErrorCode::UnknownTrack,
        format!("you publish no track {track}"),
    )
}

/// Bounded label values for the messages counter: known types, or "invalid".
fn label_for(kind: &str) -> &'static str {
    CLIENT_TYPES
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("invalid")
}
