//! A client's trickled ICE candidates: held back while the client's own connectivity checks
//! connect us, and used only if they have not done so in time.
//!
//! Plaza's address is advertised and reachable, so a client's first check tells us its address
//! (a peer-reflexive candidate): that is all ICE-lite servers ever use, and it connects at
//! once. Adding a trickled candidate as well slows joins: when it arrives after that first
//! check, webrtc-ice 0.17 holds a second, never-checked pair for the same address, ranks it
//! above the working one, and waits a whole check interval (200 ms) before it nominates. But
//! the client's checks can also be over before we listen (an overloaded server applying the
//! answer late, a client that gives up on a pair after a few unanswered checks); then only our
//! own checks towards its candidates connect us. So candidates are held for [`GRACE`] after
//! the first answer, and used from then on if ICE has not connected by itself.

use std::sync::{Mutex, Weak};
use std::time::Duration;

use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::peer_connection::RTCPeerConnection;

use super::peer::IceCandidate;
use super::RtcError;

/// How long the client's own checks have to connect us before its candidates are used.
pub const GRACE: Duration = Duration::from_millis(1000);

/// At most this many candidates are held; a client has a handful (one per interface and
/// server, per address family).
const MAX_HELD: usize = 64;

enum State {
    Holding(Vec<RTCIceCandidateInit>),
    /// The grace is over: candidates go to the peer connection as they arrive.
    Passing,
}

pub struct RemoteCandidates {
    state: Mutex<State>,
}

impl Default for RemoteCandidates {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::Holding(Vec::new())),
        }
    }
}

impl RemoteCandidates {
    /// Checks and holds a candidate, or adds it to `pc` (which checks it) once the grace is over.
    pub async fn add(&self, pc: &RTCPeerConnection, c: IceCandidate) -> Result<(), RtcError> {
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_m_line_index,
            username_fragment: c.username_fragment,
        };
        {
            let mut state = self.lock();
            if let State::Holding(held) = &mut *state {
                let value = init
                    .candidate
                    .strip_prefix("candidate:")
                    .unwrap_or(&init.candidate);
                webrtc::ice::candidate::candidate_base::unmarshal_candidate(value)
                    .map_err(|e| RtcError::BadCandidate(e.to_string()))?;
                if held.len() >= MAX_HELD {
                    return Err(RtcError::BadCandidate(format!(
                        "more than {MAX_HELD} candidates before ICE could use them"
                    )));
                }
                held.push(init);
                return Ok(());
            }
        }
        pc.add_ice_candidate(init)
            .await
            .map_err(|e| RtcError::BadCandidate(e.to_string()))
    }

    /// Starts the grace period; call when the first answer has been applied (ICE starts then).
    /// When it ends, the held candidates are added unless ICE connected by itself.
    pub fn start_grace(self: &std::sync::Arc<Self>, pc: Weak<RTCPeerConnection>) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GRACE).await;
            let held = match std::mem::replace(&mut *this.lock(), State::Passing) {
                State::Holding(held) => held,
                State::Passing => return,
            };
            let Some(pc) = pc.upgrade() else { return };
            if matches!(
                pc.ice_connection_state(),
                RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
            ) {
                return;
            }
            tracing::debug!(
                candidates = held.len(),
                "ICE has not connected on the client's checks: using its candidates"
            );
            for init in held {
                if let Err(e) = pc.add_ice_candidate(init).await {
                    tracing::debug!(error = %e, "held candidate rejected");
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
