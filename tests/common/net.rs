//! A UDP socket whose traffic can be cut, to simulate a network failure under a peer connection
//! while its signalling stays up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use webrtc::util::{Conn, Error};

pub struct CuttableSocket {
    inner: tokio::net::UdpSocket,
    cut: Arc<AtomicBool>,
}

impl CuttableSocket {
    pub fn new(inner: tokio::net::UdpSocket, cut: Arc<AtomicBool>) -> Self {
        Self { inner, cut }
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
            if !self.cut.load(Ordering::Relaxed) {
                return Ok(got);
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> Result<usize> {
        if self.cut.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        Ok(self.inner.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize> {
        if self.cut.load(Ordering::Relaxed) {
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
