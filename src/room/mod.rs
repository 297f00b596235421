//! Rooms: the registry of live rooms (the only shared map), one task per room that owns its
//! members and its forwarding core, and the media workers the rooms run on. Sessions talk to a
//! room only through [`RoomHandle`].

mod outgoing;
mod registry;
#[allow(clippy::module_inception)]
mod room;
mod workers;

pub use registry::Registry;
pub use room::{
    IngestPacket, JoinAccepted, RoomCommand, RoomHandle, SessionEvent, Subscription,
    SESSION_EVENT_QUEUE,
};
pub use workers::Workers;
