//! Configuration options that change how the server runs, each shown working with a real call
//! or request: ICE-lite, a UDP port range instead of the shared port, STUN discovery of the
//! public address, the signalling rate limit, a separate metrics listener, and the number of
//! media workers.

mod common;

use std::time::Duration;

use common::{test_config, wait_for, Client, ClientOptions, TestServer};
use serde_json::json;

async fn two_party_call(server: &TestServer, room: &str) -> (Client, Client) {
    let url = server.ws_url();
    let a = Client::join(&url, room, "A", ClientOptions::default()).await;
    let b = Client::join(&url, room, "B", ClientOptions::default()).await;
    for c in [&a, &b] {
        wait_for(
            &format!("{}'s media", c.name),
            Duration::from_secs(15),
            || c.flowing_tracks(20) == 2,
        )
        .await;
    }
    (a, b)
}

async fn hang_up(server: TestServer, clients: (Client, Client)) {
    common::leave_all([clients.0, clients.1]).await;
    server.assert_drained().await;
}

fn server_candidates(c: &Client) -> Vec<String> {
    c.messages_of("candidate")
        .iter()
        .filter_map(|m| m["candidate"]["candidate"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_lite_calls_work() {
    let mut config = test_config();
    config.rtc.ice_lite = true;
    let server = TestServer::start_with(config).await;
    let call = two_party_call(&server, "lite").await;
    let offer = &call.0.messages_of("offer")[0];
    assert!(offer["sdp"].as_str().unwrap().contains("a=ice-lite"));
    hang_up(server, call).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_range_gives_each_connection_its_own_port() {
    let mut config = test_config();
    config.rtc.udp_port_range = vec![47000, 47099];
    let server = TestServer::start_with(config).await;
    let call = two_party_call(&server, "range").await;
    let mut ports = Vec::new();
    for c in [&call.0, &call.1] {
        for cand in server_candidates(c) {
            // "candidate:… 1 udp PRIORITY 127.0.0.1 PORT typ host"
            let port: u16 = cand.split_whitespace().nth(5).unwrap().parse().unwrap();
            assert!((47000..=47099).contains(&port), "{cand}");
            assert!(
                cand.contains(" 127.0.0.1 "),
                "advertises only loopback: {cand}"
            );
            ports.push(port);
        }
    }
    ports.dedup();
    assert!(ports.len() >= 2, "two connections, two ports: {ports:?}");
    hang_up(server, call).await;
}

/// A STUN server on loopback that answers every binding request with the sender's address.
async fn loopback_stun_server() -> std::net::SocketAddr {
    use webrtc::stun::message::{Getter as _, Message, Setter as _, BINDING_SUCCESS};
    use webrtc::stun::xoraddr::XorMappedAddress;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut request = Message::new();
            if request.unmarshal_binary(&buf[..n]).is_err() {
                continue;
            }
            let mut response = Message::new();
            response.typ = BINDING_SUCCESS;
            response.transaction_id = request.transaction_id;
            response.write_header();
            XorMappedAddress {
                ip: from.ip(),
                port: from.port(),
            }
            .add_to(&mut response)
            .unwrap();
            let _ = socket.send_to(&response.raw, from).await;
            let _ = XorMappedAddress::default().get_from(&response);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_address_can_be_discovered_with_stun() {
    let stun = loopback_stun_server().await;
    let mut config = test_config();
    config.rtc.advertise_ips = vec![];
    config.rtc.stun_discovery = stun.to_string();
    let server = TestServer::start_with(config).await;
    assert_eq!(
        server.state.config.rtc.advertise_ips,
        vec!["127.0.0.1".to_string()]
    );
    let call = two_party_call(&server, "stun").await;
    hang_up(server, call).await;

    // No answer: the server refuses to start, saying why.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = test_config();
    config.rtc.stun_discovery = silent.local_addr().unwrap().to_string();
    let err = match plaza::server::start(config, std::future::pending()).await {
        Ok(_) => panic!("started without an answer from the STUN server"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no answer from the STUN server"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_signalling_messages_are_rate_limited_and_the_session_goes_on() {
    let mut config = test_config();
    config.limits.max_messages_per_second = 10; // bursts of 40
    let server = TestServer::start_with(config).await;
    let quiet = ClientOptions {
        audio: false,
        video: false,
        ..ClientOptions::default()
    };
    let c = Client::connect(&server.ws_url(), "flood", &quiet).await;
    for id in 0..100 {
        c.send(json!({"type": "ping", "id": id}));
    }
    wait_for("100 answers", Duration::from_secs(5), || {
        c.messages_of("pong").len() + c.messages_of("error").len() == 100
    })
    .await;
    let limited = c
        .messages_of("error")
        .iter()
        .filter(|e| e["code"] == "rate-limited")
        .count();
    let pongs = c.messages_of("pong").len();
    assert!(
        (40..=45).contains(&pongs),
        "the burst passes: {pongs} pongs"
    );
    assert_eq!(limited, 100 - pongs);
    // The budget refills: a second later the session answers again.
    let t0 = std::time::Instant::now();
    wait_for("the budget to refill", Duration::from_secs(3), || {
        t0.elapsed() >= Duration::from_millis(500)
    })
    .await;
    c.send(json!({"type": "ping", "id": 1000}));
    c.wait_message("pong 1000", Duration::from_secs(3), |m| m["id"] == 1000)
        .await;
    c.close().await;
    server.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_served_on_their_own_address() {
    let mut config = test_config();
    config.http.metrics_listen = "127.0.0.1:0".into();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = plaza::server::start(config, async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    let metrics = running.metrics_addr.expect("a metrics listener");
    assert_eq!(status(metrics, "/metrics").await, 200);
    assert_eq!(status(running.http_addr, "/metrics").await, 404);
    assert_eq!(status(running.http_addr, "/healthz").await, 200);
    let _ = tx.send(());
}

async fn status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_the_media_workers() {
    let mut config = test_config();
    config.media.workers = 2;
    let server = TestServer::start_with(config).await;
    let load = |worker: &str| {
        server
            .state
            .metrics
            .media_worker_load
            .with_label_values(&[worker])
            .get()
    };
    let first = two_party_call(&server, "first").await;
    let second = two_party_call(&server, "second").await;
    // Each worker runs one room (a unit of load) and its two participants; media flows in both.
    assert_eq!((load("0"), load("1")), (3, 3));
    let scrape = server.state.metrics.render();
    assert!(
        scrape.contains(r#"plaza_media_worker_load{worker="1"} 3"#),
        "exported: {scrape}"
    );
    common::leave_all([first.0, first.1, second.0, second.1]).await;
    server.assert_drained().await;
    assert_eq!(
        (load("0"), load("1")),
        (0, 0),
        "closed rooms give their load back"
    );
}
