//! A client's trickled ICE candidates: checked, counted, and never contacted.
//!
//! Plaza sends nothing to an address that only a client named. A trickled candidate is such an
//! address: had the server checked it, anyone could make Plaza send STUN to any host and port
//! (about eight checks per candidate, five times the bytes the client sent: a reflector).
//! Nothing is lost by ignoring them: Plaza's own address is advertised and reachable, so the
//! client's connectivity checks reach it and tell it the client's address (a peer-reflexive
//! candidate), which those checks have just authenticated with the session's ICE password. That
//! is all ICE-lite servers such as mediasoup's ever use; it connects as soon as the first check
//! arrives, and the client keeps checking until it does.
//!
//! Candidates are still parsed, so a client with a broken ICE stack hears about it, and there
//! are at most [`MAX_PER_SESSION`] of them over the connection's whole life.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::peer::IceCandidate;
use super::RtcError;

/// Candidates a connection may trickle in its life: a client has a handful (one per interface
/// and server, per address family, per ICE restart).
pub const MAX_PER_SESSION: usize = 64;

#[derive(Default)]
pub struct RemoteCandidates {
    received: AtomicUsize,
}

impl RemoteCandidates {
    /// Checks a candidate's syntax and counts it against the connection's limit.
    pub fn add(&self, c: &IceCandidate) -> Result<(), RtcError> {
        if self.received.fetch_add(1, Ordering::Relaxed) >= MAX_PER_SESSION {
            return Err(RtcError::BadCandidate(format!(
                "more than {MAX_PER_SESSION} candidates on one connection"
            )));
        }
        let value = c
            .candidate
            .strip_prefix("candidate:")
            .unwrap_or(&c.candidate);
        webrtc::ice::candidate::candidate_base::unmarshal_candidate(value)
            .map(drop)
            .map_err(|e| RtcError::BadCandidate(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(text: &str) -> IceCandidate {
        IceCandidate {
            candidate: text.to_owned(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: None,
            username_fragment: None,
        }
    }

    #[test]
    fn candidates_are_parsed_and_limited_over_the_connections_life() {
        let c = RemoteCandidates::default();
        let good = candidate("candidate:1 1 udp 2122260223 192.0.2.7 50000 typ host");
        assert!(c.add(&candidate("candidate:garbage")).is_err());
        for _ in 1..MAX_PER_SESSION {
            c.add(&good).expect("within the limit");
        }
        let e = c.add(&good).expect_err("one too many");
        assert!(e.to_string().contains("more than 64"), "{e}");
    }
}
