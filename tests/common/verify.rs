//! Verifying what receivers got against what publishers sent.

use std::collections::HashMap;
use std::time::Duration;

use super::client::RecvTrack;
use super::{wait_for, Client};

/// Checks one received track against what its publisher sent: every packet intact and from that
/// publisher, counters and sequence numbers consecutive (in order, nothing lost), video starting
/// at a keyframe, and the last packet the publisher sent present.
pub fn verify_stream(receiver: &str, t: &RecvTrack, publisher_tag: u32, sent: u64) {
    let what = format!("{receiver} ← track {} of {}", t.track_id, t.stream_id);
    assert!(!t.packets.is_empty(), "{what}: nothing received");
    let parsed: Vec<_> = t
        .packets
        .iter()
        .map(|p| {
            p.parsed
                .unwrap_or_else(|| panic!("{what}: unparseable payload"))
        })
        .collect();
    for (i, p) in parsed.iter().enumerate() {
        assert!(p.intact, "{what}: payload {i} differs from what was sent");
        assert_eq!(
            p.tag, publisher_tag,
            "{what}: packet from the wrong publisher"
        );
    }
    for (i, w) in t.packets.windows(2).enumerate() {
        let (a, b) = (w[0].parsed.unwrap(), w[1].parsed.unwrap());
        assert_eq!(
            b.counter,
            a.counter + 1,
            "{what}: gap or reorder after packet {i}"
        );
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{what}: sequence numbers not continuous after packet {i}"
        );
    }
    if t.video {
        assert!(
            parsed[0].keyframe_start,
            "{what}: first video packet is not a keyframe"
        );
    }
    assert_eq!(
        parsed.last().unwrap().counter + 1,
        sent,
        "{what}: the last packets sent never arrived"
    );
}

/// Stops everyone's media, waits for it to drain, and verifies every stream every client got.
pub async fn stop_and_verify(clients: &[Client], ids: &[String]) {
    stop_and_check(clients, ids, true).await
}

/// Like [`stop_and_verify`], but packets may arrive out of order (retransmissions), and audio,
/// which is never retransmitted, may lose up to 1 % of its packets to a loaded kernel; video
/// must be complete.
pub async fn stop_and_verify_complete(clients: &[Client], ids: &[String]) {
    stop_and_check(clients, ids, false).await
}

async fn stop_and_check(clients: &[Client], ids: &[String], in_order: bool) {
    for c in clients {
        c.stop_media();
    }
    for c in clients {
        wait_for("the sender to stop", Duration::from_secs(2), || {
            c.media_stopped()
        })
        .await;
    }
    // The counters are final now: wait until the last packet of each track has arrived.
    let tags: HashMap<&str, (u32, u64, u64)> = ids
        .iter()
        .zip(clients)
        .map(|(id, c)| {
            (
                id.as_str(),
                (c.tag, c.sent_counter(false), c.sent_counter(true)),
            )
        })
        .collect();
    for c in clients {
        wait_for(
            &format!("{} to receive the last packet of every track", c.name),
            Duration::from_secs(5),
            || {
                c.received().values().all(|t| {
                    let (_, audio, video) = tags[t.stream_id.as_str()];
                    let sent = if t.video { video } else { audio };
                    let highest = t
                        .packets
                        .iter()
                        .filter_map(|p| p.parsed)
                        .map(|p| p.counter)
                        .max();
                    // Audio's very last packet may be among the losses tolerated without order.
                    let slack = if in_order || t.video { 0 } else { 1 };
                    highest.is_some_and(|h| h + 1 + slack >= sent)
                })
            },
        )
        .await;
        let mut verified = 0;
        for t in c.received().values() {
            let (tag, audio, video) = tags[t.stream_id.as_str()];
            let sent = if t.video { video } else { audio };
            if in_order {
                verify_stream(&c.name, t, tag, sent);
            } else {
                let tolerated = if t.video { 0 } else { sent / 100 };
                verify_complete(&c.name, t, tag, sent, tolerated);
            }
            verified += t.packets.len();
        }
        eprintln!(
            "{}: {verified} packets on {} tracks verified",
            c.name,
            c.received().len()
        );
    }
}

/// Checks that a stream arrived complete and intact, allowing retransmissions to arrive out of
/// order (as they do after a NACK): sorted by counter, every packet from the first received to
/// the last sent is there, exactly once after de-duplication.
pub fn verify_complete(
    receiver: &str,
    t: &RecvTrack,
    publisher_tag: u32,
    sent: u64,
    tolerated_missing: u64,
) -> usize {
    let what = format!("{receiver} ← track {} of {}", t.track_id, t.stream_id);
    let mut counters: Vec<u64> = t
        .packets
        .iter()
        .map(|p| {
            let parsed = p
                .parsed
                .unwrap_or_else(|| panic!("{what}: unparseable payload"));
            assert!(parsed.intact, "{what}: payload differs from what was sent");
            assert_eq!(
                parsed.tag, publisher_tag,
                "{what}: packet from the wrong publisher"
            );
            parsed.counter
        })
        .collect();
    // A packet is late when one sent after it arrived before it.
    let mut highest = None;
    let mut late = 0;
    for &c in &counters {
        if highest.is_some_and(|h| c < h) {
            late += 1;
        }
        highest = highest.max(Some(c));
    }
    counters.sort_unstable();
    counters.dedup();
    let first = counters[0];
    let missing: Vec<u64> = (first..sent)
        .filter(|c| counters.binary_search(c).is_err())
        .collect();
    assert!(
        missing.len() as u64 <= tolerated_missing,
        "{what}: {} packets never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    late
}
