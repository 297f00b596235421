//! The signalling protocol: every message a client and the server exchange over the WebSocket,
//! as serde types. JSON objects with a `type` field; the full description, with a transcript,
//! is `docs/protocol.md`, and the two must stay in step.

use serde::{Deserialize, Serialize};

use crate::config::IceServer;
use crate::forward::{MediaKind, ParticipantId, TrackId};
pub use crate::rtc::IceCandidate;

/// The protocol version this server speaks; `join` must carry it.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a participant says it will publish on a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackSource {
    Camera,
    Microphone,
    Screen,
    #[serde(rename = "screen-audio")]
    ScreenAudio,
    Other,
}

/// A client's request to publish one track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The client's own reference for the track, echoed back in offers (at most 64 characters).
    pub cid: String,
    pub kind: MediaKind,
    #[serde(default = "default_source")]
    pub source: TrackSource,
    #[serde(default)]
    pub muted: bool,
    /// Video only: publish simulcast layers (rids `q`, `h`, `f`, smallest first); the offer
    /// then asks for them on this track's m-line. Ignored for audio.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulcast: bool,
}

fn default_visible() -> bool {
    true
}

fn default_source() -> TrackSource {
    TrackSource::Other
}

/// A message from a client. `Serialize` is for clients written in Rust (and for checking that
/// what the server accepts is exactly what it would write).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClientMessage {
    Join {
        version: u32,
        room: String,
        name: String,
        #[serde(default)]
        publish: Vec<PublishRequest>,
    },
    Publish {
        tracks: Vec<PublishRequest>,
    },
    Unpublish {
        track_id: TrackId,
    },
    Mute {
        track_id: TrackId,
        muted: bool,
    },
    /// How the client shows a track it receives (adaptive stream): hidden tracks get no video,
    /// shown ones the smallest simulcast layer that looks sharp at `height` device pixels.
    TrackView {
        track_id: TrackId,
        #[serde(default = "default_visible")]
        visible: bool,
        #[serde(default)]
        height: Option<u16>,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: Option<IceCandidate>,
    },
    Chat {
        text: String,
        #[serde(default)]
        to: Option<ParticipantId>,
    },
    Ping {
        #[serde(default)]
        id: Option<u64>,
    },
    Leave {},
}

impl ClientMessage {
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Publish { .. } => "publish",
            ClientMessage::Unpublish { .. } => "unpublish",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::TrackView { .. } => "track-view",
            ClientMessage::Answer { .. } => "answer",
            ClientMessage::Candidate { .. } => "candidate",
            ClientMessage::Chat { .. } => "chat",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::Leave {} => "leave",
        }
    }
}

/// A published track as others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub muted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: ParticipantId,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
}

/// One m-line of an offer and what it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "direction", rename_all = "lowercase")]
pub enum MidBinding {
    /// The client sends its track `cid` on this transceiver (the server receives).
    Send {
        mid: String,
        cid: String,
        track_id: TrackId,
        kind: MediaKind,
    },
    /// The client receives `participant_id`'s track `track_id` here.
    Recv {
        mid: String,
        participant_id: ParticipantId,
        track_id: TrackId,
        kind: MediaKind,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    Joined {
        version: u32,
        room: String,
        participant_id: ParticipantId,
        members: Vec<MemberInfo>,
        ice_servers: Vec<IceServer>,
    },
    ParticipantJoined {
        participant: MemberInfo,
    },
    ParticipantLeft {
        participant_id: ParticipantId,
        reason: LeaveReason,
    },
    Offer {
        sdp: String,
        mids: Vec<MidBinding>,
    },
    Candidate {
        candidate: Option<IceCandidate>,
    },
    TrackPublished {
        participant_id: ParticipantId,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant_id: ParticipantId,
        track_id: TrackId,
    },
    TrackMuted {
        participant_id: ParticipantId,
        track_id: TrackId,
        muted: bool,
    },
    /// Dynacast: of the client's own simulcast track, send only these layers (rids); the
    /// others nobody receives. Empty: nobody receives the track at all.
    TrackLayers {
        track_id: TrackId,
        rids: Vec<String>,
    },
    Chat {
        from: ParticipantId,
        name: String,
        text: String,
        /// Milliseconds since the Unix epoch, server clock.
        ts: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        private: bool,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The server is shutting down: the session ends right after this message. Reconnect (with
    /// a backoff) to rejoin, on this server once it is back or on another.
    ServerShutdown {
        message: String,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// The `type` of the message that caused the error, when it could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaveReason {
    Left,
    Disconnected,
    TimedOut,
    ServerShutdown,
}

/// Stable error codes; clients may switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Not JSON, or not an object with a string `type`.
    MalformedMessage,
    /// A `type` this server does not know.
    UnknownType,
    /// A known `type` whose fields are missing, of the wrong type, or out of range.
    InvalidMessage,
    /// Larger than `limits.max_message_bytes`.
    MessageTooLarge,
    /// `join.version` is not one this server speaks.
    UnsupportedVersion,
    /// Anything but `join` or `ping` before joining.
    NotJoined,
    /// A second `join` on the same connection.
    AlreadyJoined,
    /// The room has `limits.max_participants_per_room` members.
    RoomFull,
    /// The server has `limits.max_rooms` rooms.
    TooManyRooms,
    /// More than `limits.max_tracks_per_participant` published tracks.
    TooManyTracks,
    /// An `answer` when no offer is outstanding.
    NoOfferPending,
    /// The SDP answer could not be applied (the session stays as it was before it).
    InvalidSdp,
    /// The ICE candidate could not be applied.
    InvalidCandidate,
    /// A track id that is not one of yours (or does not exist).
    UnknownTrack,
    /// A participant id that is not in your room.
    UnknownParticipant,
    /// More than `limits.max_messages_per_second` (beyond a burst): the message was dropped.
    RateLimited,
    /// The server is shutting down and takes no new joins.
    ShuttingDown,
    /// Your published, unmuted tracks brought no media for 20 s while your connection stayed
    /// up: the server closes the session (reconnect to rejoin).
    MediaTimeout,
    /// The server failed; the message says nothing more on purpose (see the server's log).
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedMessage => "malformed-message",
            ErrorCode::UnknownType => "unknown-type",
            ErrorCode::InvalidMessage => "invalid-message",
            ErrorCode::MessageTooLarge => "message-too-large",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::NotJoined => "not-joined",
            ErrorCode::AlreadyJoined => "already-joined",
            ErrorCode::RoomFull => "room-full",
            ErrorCode::TooManyRooms => "too-many-rooms",
            ErrorCode::TooManyTracks => "too-many-tracks",
            ErrorCode::NoOfferPending => "no-offer-pending",
            ErrorCode::InvalidSdp => "invalid-sdp",
            ErrorCode::InvalidCandidate => "invalid-candidate",
            ErrorCode::UnknownTrack => "unknown-track",
            ErrorCode::UnknownParticipant => "unknown-participant",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::MediaTimeout => "media-timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A client error to send back: code, readable message, and the offending message's type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
    pub request: Option<String>,
}

impl ClientError {
    /// The message is cut to [`MAX_ERROR_CHARS`]: many quote what the client sent (an SDP
    /// line, a cid, serde's view of a value), which must not come back whole.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: truncate_message(message.into()),
            request: None,
        }
    }

    pub fn into_message(self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message,
            request: self.request,
        }
    }
}

/// Message types a client may send, for telling `unknown-type` from `invalid-message` (and the
/// bounded label values of the messages counter).
pub const CLIENT_TYPES: &[&str] = &[
    "join",
    "publish",
    "unpublish",
    "mute",
    "track-view",
    "answer",
    "candidate",
    "chat",
    "ping",
    "leave",
];

/// Parses one text frame, classifying what is wrong with it when it cannot be used.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ClientError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        ClientError::new(ErrorCode::MalformedMessage, format!("not valid JSON: {e}"))
    })?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
    else {
        return Err(ClientError::new(
            ErrorCode::MalformedMessage,
            "expected a JSON object with a string \"type\" field",
        ));
    };
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        let kind = truncate(&kind, 64);
        let mut e = ClientError::new(
            ErrorCode::UnknownType,
            format!("unknown message type {kind:?}"),
        );
        e.request = Some(kind);
        return Err(e);
    }
    serde_json::from_value(value).map_err(|e| {
        // serde quotes the offending value whole: a 200 KB string would come straight back
        // (cut by `ClientError::new`).
        let mut error = ClientError::new(
            ErrorCode::InvalidMessage,
            format!("invalid {kind:?} message: {e}"),
        );
        error.request = Some(kind);
        error
    })
}

/// Longest error message sent to a client, in characters.
const MAX_ERROR_CHARS: usize = 300;

fn truncate_message(message: String) -> String {
    if message.chars().count() <= MAX_ERROR_CHARS {
        return message;
    }
    let mut short = truncate(&message, MAX_ERROR_CHARS - 1);
    short.push('…');
    short
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_errors_are_classified() {
        let join = parse_client_message(
            r#"{"type":"join","version":1,"room":"r","name":"Ann","publish":[{"cid":"mic","kind":"audio","source":"microphone"}]}"#,
        )
        .unwrap();
        assert_eq!(join.type_name(), "join");
        assert_eq!(
            parse_client_message("{nope").unwrap_err().code,
            ErrorCode::MalformedMessage
        );
        assert_eq!(
            parse_client_message("[1,2]").unwrap_err().code,
            ErrorCode::MalformedMessage
        );
        assert_eq!(
            parse_client_message(r#"{"type":"dance"}"#)
                .unwrap_err()
                .code,
            ErrorCode::UnknownType
        );
        let e =
            parse_client_message(r#"{"type":"mute","track_id":"p1","muted":true}"#).unwrap_err();
        assert_eq!(
            (e.code, e.request.as_deref()),
            (ErrorCode::InvalidMessage, Some("mute"))
        );
        assert!(parse_client_message(r#"{"type":"leave"}"#).is_ok());
        assert!(parse_client_message(r#"{"type":"candidate","candidate":null}"#).is_ok());
    }

    #[test]
    fn non_canonical_ids_are_invalid_messages() {
        for to in [
            "p+1",
            "p01",
            "p0",
            "p 1",
            "p1 ",
            "p-1",
            "p18446744073709551616",
        ] {
            let text = format!(r#"{{"type":"chat","text":"hi","to":"{to}"}}"#);
            let e = parse_client_message(&text).unwrap_err();
            assert_eq!(
                (e.code, e.request.as_deref()),
                (ErrorCode::InvalidMessage, Some("chat")),
                "{to}"
            );
        }
        for id in ["t+5", "t007", "t0"] {
            let text = format!(r#"{{"type":"unpublish","track_id":"{id}"}}"#);
            assert_eq!(
                parse_client_message(&text).unwrap_err().code,
                ErrorCode::InvalidMessage,
                "{id}"
            );
        }
    }

    #[test]
    fn error_messages_do_not_echo_whole_inputs() {
        let big = "x".repeat(100_000);
        let e = parse_client_message(&format!(
            r#"{{"type":"mute","track_id":"t1","muted":"{big}"}}"#
        ))
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(
            e.message.chars().count() <= MAX_ERROR_CHARS,
            "{}",
            e.message
        );
        assert!(e.message.ends_with('…'));
    }

    #[test]
    fn accepted_messages_serialise_back_to_themselves() {
        for text in [
            r#"{"type":"join","version":1,"room":"r","name":"Ann","publish":[{"cid":"mic","kind":"audio","source":"microphone"}]}"#,
            r#"{"type":"chat","text":"a\nb","to":"p3"}"#,
            r#"{"type":"candidate","candidate":{"candidate":"c","sdpMid":"0"}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"leave"}"#,
        ] {
            let m = parse_client_message(text).unwrap();
            let again = parse_client_message(&serde_json::to_string(&m).unwrap()).unwrap();
            assert_eq!(again, m);
        }
    }

    #[test]
    fn server_messages_use_kebab_case_types_and_wire_ids() {
        let m = ServerMessage::TrackMuted {
            participant_id: ParticipantId(3),
            track_id: TrackId(9),
            muted: true,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"track-muted","participant_id":"p3","track_id":"t9","muted":true}"#
        );
    }
}
