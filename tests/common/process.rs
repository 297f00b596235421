//! The real `plaza` binary in its own process, for tests that measure the process itself: its
//! resident memory, descriptors, threads, metrics as scraped, and every line it logs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct PlazaProcess {
    child: Child,
    pub http: String,
    /// The shared media (UDP) address.
    pub udp: std::net::SocketAddr,
    /// Lines logged so far (stdout and stderr).
    lines: Arc<AtomicU64>,
    /// The last lines logged, for failure messages.
    tail: Arc<Mutex<Vec<String>>>,
}

impl Drop for PlazaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An address in the `plaza listening` line: what follows `key` (`http` or `udp`; `=` in text
/// logs, `":"` in JSON).
fn listening_address(line: &str, key: &str) -> Option<String> {
    let at = line.find(key)? + key.len();
    let rest = line[at..].trim_start_matches(|c: char| "\"=: ".contains(c));
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_owned())
}

/// Counts the lines of one output stream; sends the listening address once it appears.
fn read_lines(
    stream: impl Read + Send + 'static,
    lines: Arc<AtomicU64>,
    tail: Arc<Mutex<Vec<String>>>,
    address: std::sync::mpsc::Sender<(String, String)>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            lines.fetch_add(1, Ordering::Relaxed);
            if line.contains("plaza listening") {
                if let (Some(http), Some(udp)) = (
                    listening_address(&line, "http"),
                    listening_address(&line, "udp"),
                ) {
                    let _ = address.send((http, udp));
                }
            }
            let mut tail = tail.lock().unwrap();
            if tail.len() == 20 {
                tail.remove(0);
            }
            tail.push(line);
        }
    });
}

impl PlazaProcess {
    /// Starts the binary on loopback with ephemeral ports, with `env` on top of a clean
    /// `PLAZA_*` environment; returns once it logged its address.
    pub fn start(env: &[(&str, &str)]) -> PlazaProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_plaza"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--udp-port",
            "0",
            "--advertise-ip",
            "127.0.0.1",
        ])
        .env("PLAZA_RTC__UDP_BIND", "127.0.0.1")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        // Plaza refuses PLAZA_* variables it does not know, such as the tests' own knobs.
        for (key, _) in std::env::vars() {
            if key.starts_with("PLAZA_") {
                cmd.env_remove(key);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("plaza starts");
        let lines = Arc::new(AtomicU64::new(0));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        read_lines(stdout, lines.clone(), tail.clone(), tx.clone());
        read_lines(stderr, lines.clone(), tail.clone(), tx);
        let Ok((http, udp)) = rx.recv_timeout(Duration::from_secs(20)) else {
            // Not left running: it would hold whatever it inherited (a test runner's lock).
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "plaza logs `plaza listening` with its addresses within 20 s; it logged: {:#?}",
                tail.lock().unwrap()
            );
        };
        PlazaProcess {
            child,
            http,
            udp: udp.parse().expect("the media address is an address"),
            lines,
            tail,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Lines logged since the start.
    pub fn log_lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// The last lines logged.
    pub fn log_tail(&self) -> Vec<String> {
        self.tail.lock().unwrap().clone()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// Threads of the server process (the runtime's workers and blocking pool).
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id())).map_or(0, |d| d.count())
    }

    /// The sum of a metric's samples (all label values) from a scrape of /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = get_body(&self.http, "/metrics").await;
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// GET over a fresh connection; the body.
pub async fn get_body(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the server accepts HTTP");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: plaza\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("the request is written");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("the response is read");
    let text = String::from_utf8_lossy(&buf);
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}
