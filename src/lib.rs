//! Plaza: a selective forwarding unit for group video calls.
//!
//! The module map, packet path first:
//! - [`forward`]: the forwarding core. No I/O: which consumer gets which packet, sequence and
//!   timestamp rewriting, keyframe gating and request throttling.
//! - [`rtc`]: the only module that touches webrtc-rs: the shared UDP mux, peer connections,
//!   ingest (track → our packets) and egress (our packets → SRTP), RTCP feedback and sender
//!   reports.
//! - [`room`]: one task per room owns its members and its [`forward::Router`]; the registry
//!   maps room names to their tasks, which run on media workers (one single-threaded runtime
//!   per core, shared with the room's peer connections).
//! - [`signal`]: the WebSocket protocol (`protocol`) and one session per connection, which drives
//!   the participant's peer connection and negotiation.
//! - [`server`]: HTTP (static client, `/healthz`, signalling, `/metrics`) and `run`.
//! - [`config`] and [`metrics`]: one typed configuration tree; every Prometheus collector.
//! - [`logs`]: the log's rate limit, and the SRTP rejections webrtc-rs only logs, counted.
//!
//! Client side, never used by the server: [`client`], a headless participant (WebSocket
//! signalling and a webrtc-rs peer), and [`load`], the engine of the `plaza-load` tool.

pub mod client;
pub mod config;
pub mod forward;
pub mod load;
pub mod logs;
pub mod metrics;
pub mod room;
pub mod rtc;
pub mod server;
pub mod signal;
