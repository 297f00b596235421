//! Batched sends on the shared media socket.
//!
//! webrtc-rs sends every packet with its own `send_to`, and on this stack the kernel's
//! per-packet UDP work is the largest single cost of forwarding (docs/BENCHMARKS.md). The room
//! task writes its forwarded packets in bursts: one incoming video frame becomes a few
//! equal-sized packets for every subscriber. While it runs inside [`with_send_batching`], the
//! mux socket's `send_to` only copies each packet into a task-local batch; [`flush`] then sends
//! each subscriber's run of equal-sized packets as one UDP GSO send (`UDP_SEGMENT`: the kernel
//! cuts one large datagram into the original packets, so the IP stack is walked once per run),
//! and lone packets with `send_to`. Everything else that sends on the socket (ICE, DTLS, RTCP
//! from webrtc-rs's own tasks) is outside the scope and sends at once, as before.
//!
//! Per destination the packets keep their order. Where GSO is not available (not Linux, an old
//! kernel, a device that refuses it) the first refusal switches it off for the process.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use webrtc::util::Conn;

use super::guard::Rejection;

/// The kernel's limits for one GSO send: at most 64 segments, and one IP datagram's payload.
const MAX_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65_000;

/// Cleared at the first GSO send the kernel refuses.
static GSO_WORKS: AtomicBool = AtomicBool::new(cfg!(target_os = "linux"));

/// Packets waiting to be sent, copied out of webrtc-rs's buffers into one contiguous buffer.
#[derive(Default)]
struct SendBatch {
    socket: Option<Arc<UdpSocket>>,
    bytes: Vec<u8>,
    packets: Vec<Queued>,
}

#[derive(Clone, Copy)]
struct Queued {
    start: usize,
    len: usize,
    to: SocketAddr,
}

tokio::task_local! {
    static SEND_BATCH: RefCell<SendBatch>;
}

/// Runs `task` with sends on the media socket collected until [`flush`].
pub async fn with_send_batching<F: Future>(task: F) -> F::Output {
    SEND_BATCH
        .scope(RefCell::new(SendBatch::default()), task)
        .await
}

/// Sends what the current task collected. A no-op outside [`with_send_batching`] or when
/// nothing was collected. Send errors are per packet and, as for any UDP send, not reported:
/// the receiver's NACKs and keyframe requests recover what was lost.
pub async fn flush() {
    let Ok(Some((socket, mut bytes, mut packets))) = SEND_BATCH.try_with(|b| {
        let mut b = b.borrow_mut();
        if b.packets.is_empty() {
            return None;
        }
        let socket = b.socket.clone()?;
        Some((
            socket,
            std::mem::take(&mut b.bytes),
            std::mem::take(&mut b.packets),
        ))
    }) else {
        return;
    };
    // Each destination's packets together, in their original order (the sort is stable).
    packets.sort_by_key(|p| p.to);
    let mut rest = &packets[..];
    while !rest.is_empty() {
        let run = &rest[..gso_run(rest)];
        let gso = run.len() > 1 && GSO_WORKS.load(Ordering::Relaxed);
        if !gso || send_segments(&socket, &bytes, run).await.is_err() {
            // One by one: a lone packet, or GSO refused.
            for p in run {
                let _ = socket.send_to(&bytes[p.start..p.start + p.len], p.to).await;
            }
        }
        rest = &rest[run.len()..];
    }
    // Give the buffers back, emptied, so the next batch reuses their capacity.
    bytes.clear();
    packets.clear();
    let _ = SEND_BATCH.try_with(|b| {
        let mut b = b.borrow_mut();
        b.bytes = bytes;
        b.packets = packets;
    });
}

/// How many packets from the start of `packets` one GSO send can carry: same destination,
/// the same size as the first, except the last, which may be shorter.
fn gso_run(packets: &[Queued]) -> usize {
    let first = packets[0];
    let mut n = 1;
    let mut total = first.len;
    for p in &packets[1..] {
        if n == MAX_SEGMENTS
            || p.to != first.to
            || p.len > first.len
            || total + p.len > MAX_GSO_BYTES
        {
            break;
        }
        n += 1;
        total += p.len;
        if p.len < first.len {
            break;
        }
    }
    n
}

/// One GSO send of `run` (one destination, equal sizes but the last). An error other than a
/// full socket buffer means the kernel or the device refuses GSO: it is switched off.
#[cfg(target_os = "linux")]
async fn send_segments(socket: &UdpSocket, bytes: &[u8], run: &[Queued]) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let segment = run[0].len as u16;
    let slices: Vec<IoSlice<'_>> = run
        .iter()
        .map(|p| IoSlice::new(&bytes[p.start..p.start + p.len]))
        .collect();
    let to = SockaddrStorage::from(run[0].to);
    let sent = socket
        .async_io(Interest::WRITABLE, || {
            sendmsg(
                socket.as_raw_fd(),
                &slices,
                &[ControlMessage::UdpGsoSegments(&segment)],
                MsgFlags::empty(),
                Some(&to),
            )
            .map_err(io::Error::from)
        })
        .await;
    if let Err(e) = &sent {
        GSO_WORKS.store(false, Ordering::Relaxed);
        tracing::info!(error = %e, "UDP GSO refused: sending packets one by one");
    }
    sent
}

#[cfg(not(target_os = "linux"))]
async fn send_segments(_: &UdpSocket, _: &[u8], _: &[Queued]) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The mux's socket: sends are batched inside [`with_send_batching`], immediate elsewhere.
/// What it receives passes [`super::guard::admit`] first.
pub struct BatchingSocket {
    socket: Arc<UdpSocket>,
    /// Refused datagrams by reason, in [`super::guard::Rejection::ALL`]'s order.
    rejected: [IntCounter; 3],
}

impl BatchingSocket {
    pub fn new(socket: UdpSocket, rejected: IntCounterVec) -> Self {
        Self {
            socket: Arc::new(socket),
            rejected: Rejection::ALL.map(|r| rejected.with_label_values(&[r.as_str()])),
        }
    }

    /// Receives the next datagram that the stack can safely parse; the others are counted and
    /// dropped here.
    async fn recv_admitted(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            match super::guard::admit(&buf[..n]) {
                Ok(()) => return Ok((n, from)),
                Err(reason) => self.rejected[reason as usize].inc(),
            }
        }
    }
}

/// Adds a packet to the current task's batch; gives it back when there is no batch.
fn collect(socket: &Arc<UdpSocket>, buf: &[u8], target: SocketAddr) -> bool {
    SEND_BATCH
        .try_with(|b| {
            let mut b = b.borrow_mut();
            if b.socket.is_none() {
                b.socket = Some(socket.clone());
            }
            let start = b.bytes.len();
            b.bytes.extend_from_slice(buf);
            b.packets.push(Queued {
                start,
                len: buf.len(),
                to: target,
            });
        })
        .is_ok()
}

#[async_trait::async_trait]
impl Conn for BatchingSocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc::util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Ok(self.recv_admitted(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        Ok(self.recv_admitted(buf).await?)
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        if collect(&self.socket, buf, target) {
            return Ok(buf.len());
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_counters() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("rejected", "test"), &["reason"]).unwrap()
    }

    fn queued(sizes: &[(usize, u16)]) -> Vec<Queued> {
        let mut start = 0;
        sizes
            .iter()
            .map(|&(len, port)| {
                let q = Queued {
                    start,
                    len,
                    to: SocketAddr::from(([127, 0, 0, 1], port)),
                };
                start += len;
                q
            })
            .collect()
    }

    #[test]
    fn a_run_is_equal_sizes_to_one_destination_ending_at_most_one_shorter_packet() {
        let p = queued(&[(1100, 1), (1100, 1), (700, 1), (1100, 1)]);
        assert_eq!(gso_run(&p), 3, "the shorter packet ends the run");
        let p = queued(&[(1100, 1), (1100, 2)]);
        assert_eq!(gso_run(&p), 1, "another destination");
        let p = queued(&[(700, 1), (1100, 1)]);
        assert_eq!(gso_run(&p), 1, "a longer packet cannot follow");
        let p = queued(&[(100, 1); 100]);
        assert_eq!(gso_run(&p), MAX_SEGMENTS);
        let p = queued(&[(1400, 1); 60]);
        assert_eq!(
            gso_run(&p),
            MAX_GSO_BYTES / 1400,
            "one datagram's payload at most"
        );
    }

    #[tokio::test]
    async fn a_flushed_batch_arrives_complete_and_in_order_per_destination() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let conn = BatchingSocket::new(server, test_counters());
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // Interleaved destinations and sizes, as fan-out writes them.
        let mut sent: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for i in 0..40u8 {
            let len = if i % 5 == 4 { 300 } else { 1100 };
            sent.push((if i % 2 == 0 { to_a } else { to_b }, vec![i; len]));
        }
        with_send_batching(async {
            for (to, packet) in &sent {
                conn.send_to(packet, *to).await.unwrap();
            }
            flush().await;
        })
        .await;
        for (socket, addr) in [(&a, to_a), (&b, to_b)] {
            let want: Vec<&Vec<u8>> = sent
                .iter()
                .filter(|(to, _)| *to == addr)
                .map(|(_, p)| p)
                .collect();
            let mut buf = vec![0u8; 2048];
            for expected in want {
                let n =
                    tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(&mut buf))
                        .await
                        .expect("every packet arrives within 5 s")
                        .unwrap();
                assert_eq!(
                    &buf[..n],
                    &expected[..],
                    "packets arrive whole and in order"
                );
            }
        }
        if cfg!(target_os = "linux") {
            assert!(
                GSO_WORKS.load(Ordering::Relaxed),
                "the kernel took the GSO sends"
            );
        }
    }

    #[tokio::test]
    async fn refused_datagrams_are_counted_and_the_next_good_one_is_received() {
        let counters = test_counters();
        let conn = BatchingSocket::new(
            UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            counters.clone(),
        );
        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = conn.local_addr().unwrap();
        // The forged RTP of issue 11, a non-WebRTC byte, then a STUN header.
        let forged = [
            0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0x10, 0, 0, 1, 1, 0xc8, 0, 0,
        ];
        attacker.send_to(&forged, to).await.unwrap();
        attacker.send_to(&[0xff; 30], to).await.unwrap();
        attacker.send_to(&[0, 1, 0, 0], to).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) =
            tokio::time::timeout(std::time::Duration::from_secs(5), conn.recv_from(&mut buf))
                .await
                .expect("the STUN datagram is received within 5 s")
                .unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&[0u8, 1, 0, 0][..], attacker.local_addr().unwrap())
        );
        assert_eq!(counters.with_label_values(&["malformed_rtp"]).get(), 1);
        assert_eq!(counters.with_label_values(&["not_webrtc"]).get(), 1);
    }

    #[tokio::test]
    async fn outside_a_batch_sends_go_out_at_once() {
        let conn = BatchingSocket::new(
            UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            test_counters(),
        );
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        conn.send_to(b"now", peer.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), peer.recv(&mut buf))
            .await
            .expect("sent without a flush")
            .unwrap();
        assert_eq!(&buf[..n], b"now");
    }
}
