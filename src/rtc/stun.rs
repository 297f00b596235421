//! Public address discovery: one STUN binding request (RFC 5389) to a configured server at
//! start, whose XOR-MAPPED-ADDRESS answer is the address the internet sees us at.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use webrtc::stun::agent::TransactionId;
use webrtc::stun::message::{Getter, Message, BINDING_REQUEST, BINDING_SUCCESS};
use webrtc::stun::xoraddr::XorMappedAddress;

#[derive(Debug, thiserror::Error)]
pub enum StunError {
    #[error("cannot resolve the STUN server {0}")]
    Resolve(String),
    #[error("no answer from the STUN server {0} after {1} attempts")]
    NoAnswer(String, usize),
    #[error("STUN: {0}")]
    Io(#[from] std::io::Error),
}

/// Asks `server` (host:port) which address our UDP packets come from.
pub async fn discover_public_ip(server: &str) -> Result<IpAddr, StunError> {
    const ATTEMPTS: usize = 3;
    let target: SocketAddr = tokio::net::lookup_host(server)
        .await
        .map_err(|_| StunError::Resolve(server.to_owned()))?
        .next()
        .ok_or_else(|| StunError::Resolve(server.to_owned()))?;
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal address")
    } else {
        "[::]:0".parse().expect("literal address")
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    let mut request = Message::new();
    request
        .build(&[Box::new(BINDING_REQUEST), Box::new(TransactionId::new())])
        .expect("a binding request always builds");
    let mut buf = vec![0u8; 1500];
    for _ in 0..ATTEMPTS {
        socket.send_to(&request.raw, target).await?;
        let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await
        else {
            continue;
        };
        if from != target {
            continue;
        }
        let mut response = Message::new();
        if response.unmarshal_binary(&buf[..n]).is_err()
            || response.typ != BINDING_SUCCESS
            || response.transaction_id != request.transaction_id
        {
            continue;
        }
        let mut mapped = XorMappedAddress::default();
        if mapped.get_from(&response).is_ok() {
            return Ok(mapped.ip);
        }
    }
    Err(StunError::NoAnswer(server.to_owned(), ATTEMPTS))
}
