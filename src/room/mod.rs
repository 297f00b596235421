//! Rooms: the registry of live rooms (the only shared map) and one task per room that owns its
//! members and its forwarding core. Sessions talk to a room only through [`RoomHandle`].

mod outgoing;
mod registry;
#[allow(clippy::module_inception)]
mod room;

pub use registry::Registry;
pub use room::{IngestPacket, JoinAccepted, RoomCommand, RoomHandle, SessionEvent, Subscription};
