//! A UDP socket whose traffic can be cut (a network failure under a peer connection while its
//! signalling stays up) or made lossy (every Nth video RTP packet dropped, in or out).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use webrtc::util::{Conn, Error};

/// Shared switches of one client's network.
#[derive(Debug, Default)]
pub struct NetworkControl {
    pub cut: AtomicBool,
    /// Drop every Nth inbound / outbound video RTP packet (0: none).
    pub drop_in_every: AtomicU64,
    pub drop_out_every: AtomicU64,
    /// Drop every Nth inbound audio RTP packet (0: none); audio is not retransmitted.
    pub drop_in_audio_every: AtomicU64,
    /// Drop this many of the next outbound STUN binding requests (our ICE checks), as a
    /// firewall that lets the server reach us first would.
    pub drop_out_checks: AtomicU64,
    pub dropped_in: AtomicU64,
    pub dropped_out: AtomicU64,
    seen_in: AtomicU64,
    seen_out: AtomicU64,
    seen_audio_in: AtomicU64,
}

/// SRTP keeps the RTP header in the clear: version 2, and a second byte that is not an RTCP
/// packet type. Video packets are told from audio by size.
fn is_rtp(buf: &[u8]) -> bool {
    buf.len() >= 12 && buf[0] >> 6 == 2 && !(192..=223).contains(&buf[1])
}

/// A STUN binding request (an ICE connectivity check): type 0x0001 and the magic cookie.
fn is_binding_request(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[..2] == [0x00, 0x01] && buf[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

fn is_video_rtp(buf: &[u8]) -> bool {
    buf.len() > 300 && is_rtp(buf)
}

fn is_audio_rtp(buf: &[u8]) -> bool {
    buf.len() <= 300 && is_rtp(buf)
}

impl NetworkControl {
    fn lose_check(&self, buf: &[u8]) -> bool {
        is_binding_request(buf)
            && self
                .drop_out_checks
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }

    fn lose_audio(&self, buf: &[u8]) -> bool {
        let n = self.drop_in_audio_every.load(Ordering::Relaxed);
        if n == 0 || !is_audio_rtp(buf) {
            return false;
        }
        if (self.seen_audio_in.fetch_add(1, Ordering::Relaxed) + 1) % n == 0 {
            self.dropped_in.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn lose(&self, buf: &[u8], every: &AtomicU64, seen: &AtomicU64, dropped: &AtomicU64) -> bool {
        let n = every.load(Ordering::Relaxed);
        if n == 0 || !is_video_rtp(buf) {
            return false;
        }
        if (seen.fetch_add(1, Ordering::Relaxed) + 1) % n == 0 {
            dropped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

pub struct CuttableSocket {
    inner: tokio::net::UdpSocket,
    net: Arc<NetworkControl>,
}

impl CuttableSocket {
    pub fn new(inner: tokio::net::UdpSocket, net: Arc<NetworkControl>) -> Self {
        Self { inner, net }
    }

    fn drop_outbound(&self, buf: &[u8]) -> bool {
        let n = &self.net;
        n.cut.load(Ordering::Relaxed)
            || n.lose(buf, &n.drop_out_every, &n.seen_out, &n.dropped_out)
            || n.lose_check(buf)
    }
}

type Result<T> = std::result::Result<T, Error>;

#[async_trait::async_trait]
impl Conn for CuttableSocket {
    async fn connect(&self, addr: SocketAddr) -> Result<()> {
        Ok(self.inner.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr)> {
        loop {
            let got = self.inner.recv_from(buf).await?;
            let n = &self.net;
            let packet = &buf[..got.0];
            if n.cut.load(Ordering::Relaxed)
                || n.lose(packet, &n.drop_in_every, &n.seen_in, &n.dropped_in)
                || n.lose_audio(packet)
            {
                continue;
            }
            return Ok(got);
        }
    }

    async fn send(&self, buf: &[u8]) -> Result<usize> {
        if self.drop_outbound(buf) {
            return Ok(buf.len());
        }
        Ok(self.inner.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize> {
        if self.drop_outbound(buf) {
            return Ok(buf.len());
        }
        Ok(self.inner.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.inner.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
