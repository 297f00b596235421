//! Signalling: the protocol's message types and one session per WebSocket connection.

pub mod protocol;
mod session;

pub use session::run_session;
