//! The real `plaza` binary: configuration from flags and environment, and graceful shutdown on
//! SIGTERM with a call in progress.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{wait_for, Client, ClientOptions};

struct Server {
    child: Child,
    http: String,
}

/// Starts the binary on loopback with ephemeral ports; returns once it logged its address.
fn spawn_plaza(extra_env: &[(&str, &str)]) -> Server {
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
    .env("PLAZA_LOG__FORMAT", "json")
    .env("PLAZA_LOG__LEVEL", "info,webrtc=off")
    .env(
        "PLAZA_HTTP__STATIC_DIR",
        concat!(env!("CARGO_MANIFEST_DIR"), "/static"),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("plaza starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "plaza listening" {
                let _ = tx.send(v["fields"]["http"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let http = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("plaza logs `plaza listening` with its address within 20 s");
    Server { child, http }
}

/// GET over a fresh connection; the status code, or None if the connection is refused.
async fn get_status(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: plaza\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_clients_fails_readiness_and_exits_cleanly_in_time() {
    let mut server = spawn_plaza(&[("PLAZA_TIMEOUTS__SHUTDOWN_MS", "3000")]);
    assert_eq!(get_status(&server.http, "/readyz").await, Some(200));
    let url = format!("ws://{}/ws", server.http);
    let ann = Client::join(&url, "bye", "Ann", ClientOptions::default()).await;
    let bob = Client::join(&url, "bye", "Bob", ClientOptions::default()).await;
    for c in [&ann, &bob] {
        wait_for("the call to flow", Duration::from_secs(15), || {
            c.flowing_tracks(10) == 2
        })
        .await;
    }

    // Watch readiness as closely as we can while the server drains.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let poller = {
        let (seen, addr) = (seen.clone(), server.http.clone());
        tokio::spawn(async move {
            loop {
                let status = get_status(&addr, "/readyz").await;
                seen.lock().unwrap().push(status);
                if status.is_none() {
                    break;
                }
            }
        })
    };
    wait_for("the poller's first answer", Duration::from_secs(5), || {
        !seen.lock().unwrap().is_empty()
    })
    .await;

    let signalled_at = Instant::now();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for c in [&ann, &bob] {
        let m = c
            .wait_message("server-shutdown", Duration::from_secs(3), |m| {
                m["type"] == "server-shutdown"
            })
            .await;
        assert!(m["message"].as_str().is_some_and(|s| !s.is_empty()));
    }
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled_at.elapsed() < Duration::from_secs(5),
            "plaza did not exit within the 3 s bound (+2 s backstop)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled_at.elapsed();
    eprintln!("plaza exited with {status} {took:?} after SIGTERM");
    assert!(status.success(), "exit status {status}");
    poller.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.first(), Some(&Some(200)), "ready before the signal");
    assert!(
        seen.contains(&Some(503)),
        "/readyz failed while draining: {seen:?}"
    );
    let first_503 = seen.iter().position(|s| *s == Some(503)).unwrap();
    assert!(
        seen[first_503..].iter().all(|s| *s != Some(200)),
        "never ready again once draining"
    );
    ann.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_value_fails_at_start_naming_its_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_plaza"))
        .env("PLAZA_LIMITS__MAX_MESSAGE_BYTES", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_message_bytes"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_plaza"))
        .args(["--advertise-ip", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rtc.advertise_ips"));

    let help = Command::new(env!("CARGO_BIN_EXE_plaza"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--config",
        "--listen",
        "--udp-port",
        "--advertise-ip",
        "--log-level",
    ] {
        assert!(help.contains(flag), "--help lists {flag}");
    }
}
