//! Media workers: one single-threaded Tokio runtime per core, each running whole rooms.
//!
//! A published packet passes several tasks on its way through the server (webrtc-rs's UDP,
//! SRTP and track readers, our ingest task, the room task that fans it out and sends it). On
//! Tokio's work-stealing runtime those tasks hop between worker threads, and each hop to a
//! parked thread costs a futex wake-up and, on a virtual machine, an interrupt to another vCPU.
//! Measured at 8×8, that was about a fifth of the server's CPU (docs/BENCHMARKS.md). So, as
//! mediasoup runs one worker process per core, a room and everything its members' peer
//! connections run (the rtc module spawns there) live on one worker thread, and different rooms
//! spread over the workers. A room therefore uses at most one core.
//!
//! HTTP, WebSocket signalling and the shared UDP socket's reader stay on the main runtime.

use std::thread::JoinHandle;

use prometheus::IntGauge;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// The media worker threads, stopped when dropped.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    runtime: Handle,
    /// The rooms this worker runs plus their participants: where the next room goes
    /// (`plaza_media_worker_load`).
    load: IntGauge,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Where a room runs. The room counts as one unit of its worker's load from its placement,
/// and adds one per participant; it gives its units back when it closes.
#[derive(Clone)]
pub struct Placement {
    pub runtime: Handle,
    pub load: IntGauge,
}

impl Workers {
    /// Starts `count` worker threads, or one per available core when `count` is 0.
    pub fn start(count: usize, metrics: &Metrics) -> std::io::Result<Workers> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let workers = (0..count)
            .map(|i| {
                let load = metrics
                    .media_worker_load
                    .with_label_values(&[&i.to_string()]);
                Worker::start(i, load)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Workers { workers })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.workers.len()
    }

    /// The least loaded worker, for a new room. Rooms do not move: a call that grows stays
    /// where it started, as in mediasoup.
    pub fn place(&self) -> Placement {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.load.get())
            .expect("at least one worker is started");
        w.load.inc();
        Placement {
            runtime: w.runtime.clone(),
            load: w.load.clone(),
        }
    }
}

impl Worker {
    fn start(index: usize, load: IntGauge) -> std::io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("plaza-media-{index}"))
            .spawn(move || {
                // Runs every task spawned on the handle until told to stop (or until the
                // Workers are dropped, which drops the sender).
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // What is still running (peer connections of a server shutting down) is
                // dropped here, on this thread, outside any async context.
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })?;
        Ok(Worker {
            runtime: handle,
            load,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        // Joining from inside an async context would block that runtime's thread; the threads
        // end by themselves within their shutdown timeout.
        if Handle::try_current().is_err() {
            for w in &mut self.workers {
                if let Some(thread) = w.thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_room_goes_to_the_least_loaded_worker() {
        let metrics = Metrics::new();
        let workers = Workers::start(3, &metrics).unwrap();
        assert_eq!(workers.len(), 3);
        let load = |w: &str| metrics.media_worker_load.with_label_values(&[w]).get();
        workers.place().load.add(5); // a room on worker 0, and five participants joined it
        workers.place().load.add(2); // worker 1: a room and two participants
        workers.place(); // worker 2: a room nobody joined yet
        assert_eq!((load("0"), load("1"), load("2")), (6, 3, 1));
        workers.place();
        assert_eq!(load("2"), 2, "two empty rooms (2) < 1 + 2 < 1 + 5");
    }

    #[test]
    fn zero_means_one_worker_per_core() {
        let workers = Workers::start(0, &Metrics::new()).unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(workers.len(), cores);
    }

    #[test]
    fn work_runs_on_the_worker_thread_and_stops_with_it() {
        let workers = Workers::start(1, &Metrics::new()).unwrap();
        let placement = workers.place();
        let (tx, rx) = std::sync::mpsc::channel();
        placement.runtime.spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            tx.send(name).unwrap();
        });
        let name = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the task ran within 5 s");
        assert_eq!(name.as_deref(), Some("plaza-media-0"));
        drop(workers);
        // Stopped (the drop joined the thread): a task spawned now is dropped unrun.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        placement.runtime.spawn(async move {
            let _ = tx.send(());
        });
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
