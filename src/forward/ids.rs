//! Identifiers shared by every layer: participants and tracks.
//!
//! Ids are small integers inside the server (cheap to hash on the packet path) and prefixed
//! strings on the wire (`p12`, `t34`), so a client can never confuse one kind of id for another.
//!
//! The wire form is canonical: exactly the prefix and the number as [`fmt::Display`] writes it
//! (ASCII digits, no sign, no leading zero, not zero, within `u64`). Anything else is not an
//! id, so `p+1` or `p01` can never reach participant `p1` under another spelling.

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
                    .and_then(parse_wire_number)
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

/// The number of a wire id: what `u64`'s `Display` writes for a nonzero value, nothing else.
/// (`u64::from_str` alone would also take `+5` and `007`, and the allocator never hands out 0.)
fn parse_wire_number(digits: &str) -> Option<u64> {
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Empty or beyond u64::MAX: an error here.
    digits.parse().ok()
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
        assert_eq!(
            "t18446744073709551615".parse::<TrackId>(),
            Ok(TrackId(u64::MAX))
        );
    }

    #[test]
    fn only_the_canonical_spelling_is_an_id() {
        for bad in [
            "t0",
            "t+5",
            "t007",
            "t00",
            "t",
            "t 1",
            "t1 ",
            " t1",
            "t1.0",
            "t1e3",
            "t0x1",
            "T1",
            "t\u{661}", // ARABIC-INDIC DIGIT ONE: not ASCII
            "t18446744073709551616",
            "t99999999999999999999999",
        ] {
            assert!(
                bad.parse::<TrackId>().is_err(),
                "{bad:?} parsed as a track id"
            );
        }
        for bad in ["p+1", "p-1", "p 1", "p1 ", "p01", "p0", "pp1", "p1p"] {
            assert!(
                bad.parse::<ParticipantId>().is_err(),
                "{bad:?} parsed as a participant id"
            );
        }
        // Whatever parses prints back exactly as it was written.
        for good in ["p1", "p10", "p909", "p18446744073709551615"] {
            assert_eq!(good.parse::<ParticipantId>().unwrap().to_string(), good);
        }
    }

    #[test]
    fn ids_in_json_reject_non_canonical_forms() {
        assert_eq!(
            serde_json::from_str::<ParticipantId>(r#""p7""#).unwrap(),
            ParticipantId(7)
        );
        for bad in [r#""p+7""#, r#""p07""#, "7", "null", r#""p7\u0000""#] {
            assert!(serde_json::from_str::<ParticipantId>(bad).is_err(), "{bad}");
        }
    }
}
