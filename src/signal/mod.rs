//! Signalling: the protocol's message types, the rules for text that others will read
//! (names, room names, chat), and one session per WebSocket connection.

pub mod protocol;
mod session;
pub mod text;

pub use session::run_session;
