//! Identifiers shared by every layer: participants and tracks.
//!
//! Ids are small integers inside the server (cheap to hash on the packet path) and prefixed
//! strings on the wire (`p12`, `t34`), so a client can never confuse one kind of id for another.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! wire_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                s.strip_prefix($prefix)
                    .and_then(|n| n.parse().ok())
                    .map($name)
                    .ok_or(())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse()
                    .map_err(|_| serde::de::Error::custom(concat!("not a ", $prefix, "<n> id")))
            }
        }
    };
}

wire_id!(ParticipantId, "p");
wire_id!(TrackId, "t");

/// Hands out process-unique ids; one allocator lives in the server state.
#[derive(Debug, Default)]
pub struct IdAllocator {
    next: AtomicU64,
}

impl IdAllocator {
    pub fn participant(&self) -> ParticipantId {
        ParticipantId(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub fn track(&self) -> TrackId {
        TrackId(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_wire_form() {
        assert_eq!("p12".parse::<ParticipantId>(), Ok(ParticipantId(12)));
        assert_eq!(TrackId(7).to_string(), "t7");
        assert!("t7".parse::<ParticipantId>().is_err());
        assert!("p".parse::<ParticipantId>().is_err());
        assert!("p-1".parse::<ParticipantId>().is_err());
    }
}
