//! The webrtc-rs adapter: every call into the `webrtc` crate lives under this module, so that
//! moving to another WebRTC stack touches nothing else.
//!
//! It owns the one UDP socket all peer connections share (a UDP mux), builds peer connections
//! that advertise the configured addresses, and turns webrtc-rs callbacks into [`PeerEvent`]s,
//! incoming tracks into streams of [`crate::forward::RtpPacket`] (ingest) and our packets back
//! into RTP on subscribers' tracks (egress). Callbacks hold no strong reference to their peer
//! connection (a cycle there is webrtc-rs's classic leak); every read loop ends on error.

mod answer;
mod batch;
mod candidates;
mod egress;
mod guard;
mod peer;
pub mod simulcast;
pub mod stun;
mod telemetry;
mod track;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::{EphemeralUDP, UDPNetwork};

pub use answer::check_answer;
pub use batch::{flush as flush_sends, with_send_batching};
pub use guard::{admit as admit_datagram, Rejection as DatagramRejection};
pub use peer::{
    CodecSpec, EgressWriter, Feedback, IceCandidate, IncomingSlot, IncomingTrack, OutgoingTrack,
    Peer, PeerEvent, PeerState,
};

use crate::config::Config;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("cannot bind the media UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the media worker threads: {0}")]
    Workers(std::io::Error),
    #[error("the media worker of this connection has stopped (the server is shutting down)")]
    WorkerStopped,
    #[error("the session description was rejected: {0}")]
    BadDescription(String),
    #[error("the ICE candidate was rejected: {0}")]
    BadCandidate(String),
    #[error("webrtc: {0}")]
    Webrtc(#[from] webrtc::Error),
}

/// Settings shared by every peer connection.
pub struct RtcEngine {
    mux: Arc<UDPMuxDefault>,
    udp_addr: SocketAddr,
    /// When set, each peer connection binds its own port in this range instead of the mux.
    port_range: Option<(u16, u16)>,
    ice_lite: bool,
    advertise_ips: Vec<String>,
    ice_disconnected: Duration,
    ice_failed: Duration,
    metrics: Metrics,
}

impl RtcEngine {
    /// Binds the shared UDP socket. Must run inside a Tokio runtime.
    pub fn bind(config: &Config, metrics: Metrics) -> Result<RtcEngine, RtcError> {
        let ip: IpAddr = config
            .rtc
            .udp_bind
            .parse()
            .expect("validated: rtc.udp_bind");
        let addr = SocketAddr::new(ip, config.rtc.udp_port);
        let socket = bind_udp(addr, config.rtc.udp_recv_buffer_bytes)
            .map_err(|source| RtcError::Bind { addr, source })?;
        let udp_addr = socket
            .local_addr()
            .map_err(|source| RtcError::Bind { addr, source })?;
        let socket = batch::BatchingSocket::new(socket, metrics.rejected_datagrams.clone());
        let mux = UDPMuxDefault::new(UDPMuxParams::new(socket));
        let port_range = match config.rtc.udp_port_range[..] {
            [first, last] => Some((first, last)),
            _ => None,
        };
        Ok(RtcEngine {
            mux,
            udp_addr,
            port_range,
            ice_lite: config.rtc.ice_lite,
            advertise_ips: config.rtc.advertise_ips.clone(),
            ice_disconnected: Duration::from_millis(config.timeouts.ice_disconnected_ms),
            ice_failed: Duration::from_millis(config.timeouts.ice_failed_ms),
            metrics,
        })
    }

    /// The address the media socket is bound to (its port is the one to open in firewalls).
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    fn udp_network(&self) -> UDPNetwork {
        match self.port_range {
            Some((first, last)) => UDPNetwork::Ephemeral(
                EphemeralUDP::new(first, last).expect("validated: rtc.udp_port_range"),
            ),
            None => UDPNetwork::Muxed(self.mux.clone()),
        }
    }

    /// Stops the mux; peer connections must be closed first.
    pub async fn close(&self) {
        use webrtc::ice::udp_mux::UDPMux;
        let _ = self.mux.close().await;
    }
}

/// A nonblocking UDP socket with a large receive buffer: under load the kernel queue is where
/// packets are lost first (`/proc/net/snmp` RcvbufErrors).
fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::warn!(error = %e, "cannot raise the UDP receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < recv_buffer {
        tracing::info!(
            requested = recv_buffer,
            granted = got,
            "UDP receive buffer capped by net.core.rmem_max"
        );
    }
    tokio::net::UdpSocket::from_std(socket.into())
}
