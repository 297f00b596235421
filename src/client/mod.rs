//! A headless participant, for the load tool and the tests: a webrtc-rs peer connection on its
//! own loopback UDP socket, driven by the documented signalling protocol over a real WebSocket.
//! It answers every offer, trickles candidates, publishes synthetic audio/video (payloads that
//! carry a counter and their send time, see [`media`]) and records every packet it receives.
//!
//! This is client code: it lives beside the server's webrtc-rs adapter, not in it, and the
//! server never uses it. The `wait_*` helpers panic when their bound passes, as tests want.

pub mod media;
pub mod net;

/// Waits until `condition` holds, polling, or panics after `timeout` naming what it waited for.
pub async fn wait_for<F>(what: &str, timeout: Duration, condition: F)
where
    F: FnMut() -> bool,
{
    if !wait_until(timeout, condition).await {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Like [`wait_for`], but says whether `condition` came true in time instead of panicking, for
/// callers that can explain a failure in more detail.
pub async fn wait_until<F>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMux, UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::sender_report::SenderReport;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

use media::Parsed;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub audio: bool,
    pub video: bool,
    pub video_fps: u32,
    /// A keyframe every this many frames (besides those asked for with PLI).
    pub keyframe_every: u64,
    /// Frames already into the keyframe interval at the start: the first periodic keyframe
    /// comes after `keyframe_every - keyframe_phase` frames (the first frame is always one).
    /// Independent cameras are not in step; giving each publisher its own phase keeps a load
    /// test's periodic keyframes from all arriving at once.
    pub keyframe_phase: u64,
    pub key_packets: usize,
    pub delta_packets: usize,
    pub video_packet_size: usize,
    pub audio_packet_size: usize,
    /// Answer keyframe requests (PLI) with a keyframe on the next frame.
    pub honour_pli: bool,
    /// Answer offers as they come; when false, [`Client::answer_offer`] does it by hand.
    pub auto_answer: bool,
    /// Shape video like an encoder at this bitrate (bits/s): frames of `bitrate / fps` bytes on
    /// average, keyframes six times a delta frame, cut into packets of at most 1100 bytes.
    /// Overrides `key_packets`, `delta_packets` and `video_packet_size`.
    pub video_bitrate: Option<u32>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            audio: true,
            video: true,
            video_fps: 30,
            keyframe_every: 90,
            keyframe_phase: 0,
            key_packets: 4,
            delta_packets: 2,
            video_packet_size: 900,
            audio_packet_size: 120,
            honour_pli: true,
            auto_answer: true,
            video_bitrate: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecvPacket {
    pub seq: u16,
    pub ts: u32,
    pub parsed: Option<Parsed>,
    pub at: Instant,
    /// Wall-clock arrival (µs since the Unix epoch), to compare with the send time inside.
    pub recv_at_us: u64,
}

#[derive(Debug, Clone)]
pub struct RecvTrack {
    pub track_id: String,
    pub stream_id: String,
    pub video: bool,
    pub packets: Vec<RecvPacket>,
    /// The sender reports that arrived for this track, in order.
    pub sender_reports: Vec<SeenSenderReport>,
}

/// A sender report as it arrived, with what the receiver itself had seen at that moment.
#[derive(Debug, Clone)]
pub struct SeenSenderReport {
    pub packet_count: u32,
    pub rtp_time: u32,
    /// Packets received on the track when the report arrived.
    pub received: usize,
    /// The RTP time of the report's arrival by the receiver's own reckoning: the last packet's
    /// timestamp advanced by the time since it arrived. `None` before the first packet.
    pub local_rtp_time: Option<u32>,
    pub clock_rate: u32,
}

/// What one of our published tracks has sent so far.
#[derive(Debug, Default)]
pub struct SentTrack {
    pub counter: AtomicU64,
    pub keyframe_requested: AtomicBool,
    pub plis: AtomicU64,
}

#[derive(Default)]
pub struct Shared {
    /// Set by the media task when it has returned after a stop.
    pub media_stopped: AtomicBool,
    /// Packets received on all tracks, readable without taking the recording's lock.
    pub received_count: AtomicU64,
    pub messages: Mutex<Vec<Value>>,
    pub received: Mutex<HashMap<String, RecvTrack>>,
    pub connected: AtomicBool,
    pub failed_or_closed: AtomicBool,
    pub answers_sent: AtomicU64,
    /// The server's candidates that came before their offer was applied (a test that answers
    /// by hand applies the offer late): added once it is.
    pub early_candidates: Mutex<Vec<RTCIceCandidateInit>>,
    /// What each receiving mid carries, from the `mids` table of the last offer applied:
    /// (track id, publisher id). The server reuses m-lines, so a mid's track can change
    /// while its media keeps flowing on the same SSRC, and only this table says whose it is.
    pub recv_bindings: Mutex<HashMap<String, (String, String)>>,
    /// Bumped whenever `recv_bindings` changes, so readers look it up only then.
    pub bindings_generation: AtomicU64,
}

impl Shared {
    /// Records an offer's receive bindings; called just before the offer is applied.
    fn bind_mids(&self, offer: &Value) {
        let mut bindings = HashMap::new();
        for b in offer["mids"].as_array().into_iter().flatten() {
            if b["direction"] == "recv" {
                let field = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
                bindings.insert(field("mid"), (field("track_id"), field("participant_id")));
            }
        }
        *self.recv_bindings.lock().unwrap() = bindings;
        self.bindings_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The (track id, publisher id) that `mid` carries now.
    fn binding(&self, mid: &str) -> Option<(String, String)> {
        self.recv_bindings.lock().unwrap().get(mid).cloned()
    }
}

pub struct Client {
    pub name: String,
    /// When this client started connecting: the origin of its join time.
    pub connected_at: Instant,
    pub tag: u32,
    pub shared: Arc<Shared>,
    pub pc: Arc<RTCPeerConnection>,
    mux: Arc<UDPMuxDefault>,
    /// The address of this client's one UDP socket: where its media comes from.
    pub media_addr: std::net::SocketAddr,
    /// This client's network: cut it, or make it lossy.
    pub net: Arc<net::NetworkControl>,
    out: mpsc::UnboundedSender<Message>,
    pub audio: Option<Arc<SentTrack>>,
    pub video: Option<Arc<SentTrack>>,
    stop_media: Arc<AtomicBool>,
    local: Vec<(Arc<TrackLocalStaticRTP>, Arc<SentTrack>)>,
    tasks: Vec<JoinHandle<()>>,
}

static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

impl Client {
    /// Connects, joins `room` as `name` publishing what `options` says, and starts sending
    /// media as soon as the peer connection is up.
    pub async fn join(url: &str, room: &str, name: &str, options: ClientOptions) -> Client {
        let mut client = Client::connect(url, name, &options).await;
        let mut publish = Vec::new();
        if options.audio {
            publish.push(json!({"cid": "mic", "kind": "audio", "source": "microphone"}));
        }
        if options.video {
            publish.push(json!({"cid": "cam", "kind": "video", "source": "camera"}));
        }
        client.send(json!({
            "type": "join", "version": 1, "room": room, "name": name, "publish": publish
        }));
        client.start_media(options);
        client
    }

    /// Connects the WebSocket and prepares the peer connection without joining.
    pub async fn connect(url: &str, name: &str, options: &ClientOptions) -> Client {
        let connected_at = Instant::now();
        let socket = loopback_socket();
        let media_addr = socket.local_addr().expect("a bound socket");
        let net = Arc::new(net::NetworkControl::default());
        let mux = UDPMuxDefault::new(UDPMuxParams::new(net::CuttableSocket::new(
            socket,
            net.clone(),
        )));
        let mut settings = SettingEngine::default();
        settings.set_udp_network(UDPNetwork::Muxed(mux.clone()));
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        settings.set_network_types(vec![NetworkType::Udp4]);
        settings.set_include_loopback_candidate(true);
        // Only the address the socket is bound to: a candidate on another loopback address
        // (a test namespace may have 127.0.0.2 and more) would be one this socket never
        // receives on, and the server connects only on the checks a client really sends.
        settings.set_ip_filter(Box::new(move |ip| ip == media_addr.ip()));
        settings.set_ice_timeouts(
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(3)),
            Some(Duration::from_millis(500)),
        );
        let mut media = MediaEngine::default();
        media.register_default_codecs().unwrap();
        let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .build();
        let pc = Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .unwrap(),
        );
        let shared = Arc::new(Shared::default());
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let mut tasks = Vec::new();

        // Local tracks first: the server's recvonly m-lines are matched to these, in order.
        let mut audio = None;
        let mut video = None;
        let mut local_tracks = Vec::new();
        if options.audio {
            let t = Arc::new(TrackLocalStaticRTP::new(
                RTCRtpCodecCapability {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48000,
                    channels: 2,
                    ..Default::default()
                },
                "mic".into(),
                "local".into(),
            ));
            let sent = Arc::new(SentTrack::default());
            local_tracks.push((t, sent.clone()));
            audio = Some(sent);
        }
        if options.video {
            let t = Arc::new(TrackLocalStaticRTP::new(
                RTCRtpCodecCapability {
                    mime_type: MIME_TYPE_VP8.to_owned(),
                    clock_rate: 90000,
                    ..Default::default()
                },
                "cam".into(),
                "local".into(),
            ));
            let sent = Arc::new(SentTrack::default());
            local_tracks.push((t, sent.clone()));
            video = Some(sent);
        }
        for (track, sent) in &local_tracks {
            let transceiver = pc
                .add_transceiver_from_track(
                    track.clone() as Arc<dyn TrackLocal + Send + Sync>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        send_encodings: vec![],
                    }),
                )
                .await
                .unwrap();
            let sender = transceiver.sender().await;
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((packets, _)) = sender.read_rtcp().await {
                    for p in packets {
                        if p.as_any().is::<PictureLossIndication>() {
                            sent.plis.fetch_add(1, Ordering::Relaxed);
                            sent.keyframe_requested.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }

        let s = shared.clone();
        pc.on_track(Box::new(move |track, receiver, transceiver| {
            let s = s.clone();
            let video = track.kind() == webrtc::rtp_transceiver::rtp_codec::RTPCodecType::Video;
            let mid = transceiver.mid().map(|m| m.to_string()).unwrap_or_default();
            // Whose track this is: the offer's mids table (the SDP's msid names only the first
            // track a reused m-line carried).
            let whose = {
                let s = s.clone();
                let fallback = (track.id(), track.stream_id());
                move || s.binding(&mid).unwrap_or_else(|| fallback.clone())
            };
            let clock_rate = track.codec().capability.clock_rate;
            let ssrc = track.ssrc();
            let record_into =
                move |received: &mut HashMap<String, RecvTrack>,
                      (id, stream_id): (String, String)| {
                    received.entry(id.clone()).or_insert_with(|| RecvTrack {
                        track_id: id,
                        stream_id,
                        video,
                        packets: Vec::new(),
                        sender_reports: Vec::new(),
                    });
                };
            record_into(&mut s.received.lock().unwrap(), whose());
            let (reports, report_whose) = (s.clone(), whose.clone());
            tokio::spawn(async move {
                while let Ok((packets, _)) = receiver.read_rtcp().await {
                    for packet in packets {
                        // A compound packet reaches every receiver it names: keep our own.
                        let Some(sr) = packet
                            .as_any()
                            .downcast_ref::<SenderReport>()
                            .filter(|sr| sr.ssrc == ssrc)
                        else {
                            continue;
                        };
                        let (report_id, _) = report_whose();
                        let mut received = reports.received.lock().unwrap();
                        let Some(t) = received.get_mut(&report_id) else {
                            continue;
                        };
                        let local_rtp_time = t.packets.last().map(|p| {
                            let elapsed = p.at.elapsed().as_secs_f64();
                            p.ts.wrapping_add((elapsed * clock_rate as f64) as u32)
                        });
                        let seen = SeenSenderReport {
                            packet_count: sr.packet_count,
                            rtp_time: sr.rtp_time,
                            received: t.packets.len(),
                            local_rtp_time,
                            clock_rate,
                        };
                        t.sender_reports.push(seen);
                    }
                }
            });
            tokio::spawn(async move {
                let mut generation = u64::MAX;
                let mut current = whose();
                while let Ok((p, _)) = track.read_rtp().await {
                    let now_generation = s.bindings_generation.load(Ordering::SeqCst);
                    if now_generation != generation {
                        generation = now_generation;
                        current = whose();
                    }
                    let record = RecvPacket {
                        seq: p.header.sequence_number,
                        ts: p.header.timestamp,
                        parsed: media::parse(&p.payload, video),
                        at: Instant::now(),
                        recv_at_us: media::now_us(),
                    };
                    let mut received = s.received.lock().unwrap();
                    if !received.contains_key(&current.0) {
                        record_into(&mut received, current.clone());
                    }
                    if let Some(t) = received.get_mut(&current.0) {
                        t.packets.push(record);
                    }
                    drop(received);
                    s.received_count.fetch_add(1, Ordering::Relaxed);
                }
            });
            Box::pin(async {})
        }));
        let o = out.clone();
        pc.on_ice_candidate(Box::new(move |c| {
            let msg = match c.map(|c| c.to_json()) {
                Some(Ok(init)) => json!({"type": "candidate", "candidate": {
                    "candidate": init.candidate, "sdpMid": init.sdp_mid,
                    "sdpMLineIndex": init.sdp_mline_index}}),
                Some(Err(_)) => return Box::pin(async {}),
                None => json!({"type": "candidate", "candidate": null}),
            };
            let _ = o.send(Message::Text(msg.to_string().into()));
            Box::pin(async {})
        }));
        let s = shared.clone();
        pc.on_peer_connection_state_change(Box::new(move |state| {
            match state {
                RTCPeerConnectionState::Connected => s.connected.store(true, Ordering::SeqCst),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    s.failed_or_closed.store(true, Ordering::SeqCst)
                }
                _ => {}
            }
            Box::pin(async {})
        }));

        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        let (mut ws_tx, mut ws_rx) = ws.split();
        // Keepalive, as the protocol asks: the server closes a silent session after
        // timeouts.session_idle_ms (30 s by default).
        let o = out.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let ping = json!({"type": "ping"}).to_string();
                if o.send(Message::Text(ping.into())).is_err() {
                    break;
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if ws_tx.send(m).await.is_err() {
                    break;
                }
            }
            let _ = ws_tx.close().await;
        }));
        let s = shared.clone();
        let o = out.clone();
        let pc2 = pc.clone();
        let auto_answer = options.auto_answer;
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws_rx.next().await {
                let Message::Text(text) = m else { continue };
                let v: Value = serde_json::from_str(&text).expect("server sends JSON");
                s.messages.lock().unwrap().push(v.clone());
                match v["type"].as_str() {
                    Some("offer") if auto_answer => {
                        if let Some(sdp) = answer(&pc2, &s, &v).await {
                            let early = std::mem::take(&mut *s.early_candidates.lock().unwrap());
                            for init in early {
                                let _ = pc2.add_ice_candidate(init).await;
                            }
                            s.answers_sent.fetch_add(1, Ordering::SeqCst);
                            let _ = o.send(Message::Text(
                                json!({"type": "answer", "sdp": sdp}).to_string().into(),
                            ));
                        }
                    }
                    Some("candidate") => {
                        if let Some(c) = v["candidate"].as_object() {
                            let init = RTCIceCandidateInit {
                                candidate: c["candidate"].as_str().unwrap_or("").to_owned(),
                                sdp_mid: c.get("sdpMid").and_then(|m| m.as_str()).map(Into::into),
                                sdp_mline_index: c
                                    .get("sdpMLineIndex")
                                    .and_then(|m| m.as_u64())
                                    .map(|m| m as u16),
                                username_fragment: None,
                            };
                            if pc2.remote_description().await.is_none() {
                                s.early_candidates.lock().unwrap().push(init);
                            } else {
                                let _ = pc2.add_ice_candidate(init).await;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }));

        let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed) as u32;
        Client {
            name: name.to_owned(),
            connected_at,
            tag,
            shared,
            pc,
            mux,
            media_addr,
            net,
            out,
            audio,
            video,
            stop_media: Arc::new(AtomicBool::new(false)),
            local: local_tracks,
            tasks,
        }
    }

    /// Sends synthetic media on every local track once connected, until [`Client::stop_media`].
    pub fn start_media(&mut self, options: ClientOptions) {
        let shared = self.shared.clone();
        let stop = self.stop_media.clone();
        let tag = self.tag;
        let local = self.local.clone();
        let opts = options;
        self.tasks.push(tokio::spawn(async move {
            struct Stopped(Arc<Shared>);
            impl Drop for Stopped {
                fn drop(&mut self) {
                    self.0.media_stopped.store(true, Ordering::SeqCst);
                }
            }
            let _stopped = Stopped(shared.clone());
            while !shared.connected.load(Ordering::SeqCst) {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
            let mut video_tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / opts.video_fps as u64));
            let mut frame: u64 = 0;
            let mut audio_seq: u16 = 1000;
            let mut video_seq: u16 = 65_400; // wraps within the first second, on purpose
            loop {
                tokio::select! {
                    _ = audio_tick.tick() => {
                        if stop.load(Ordering::SeqCst) { return; }
                        for (track, sent) in &local {
                            if track.kind() != webrtc::rtp_transceiver::rtp_codec::RTPCodecType::Audio { continue; }
                            let counter = sent.counter.fetch_add(1, Ordering::SeqCst);
                            let payload = media::audio_payload(tag, counter, opts.audio_packet_size);
                            write(track, audio_seq, (counter as u32).wrapping_mul(960), true, payload).await;
                            audio_seq = audio_seq.wrapping_add(1);
                        }
                    }
                    _ = video_tick.tick() => {
                        if stop.load(Ordering::SeqCst) { return; }
                        for (track, sent) in &local {
                            if track.kind() != webrtc::rtp_transceiver::rtp_codec::RTPCodecType::Video { continue; }
                            let asked = opts.honour_pli && sent.keyframe_requested.swap(false, Ordering::SeqCst);
                            let periodic = (frame + opts.keyframe_phase) % opts.keyframe_every.max(1) == 0;
                            let key = frame == 0 || periodic || asked;
                            let (n, size) = frame_shape(&opts, key);
                            let ts = (frame as u32).wrapping_mul(90_000 / opts.video_fps);
                            for i in 0..n {
                                let counter = sent.counter.fetch_add(1, Ordering::SeqCst);
                                let payload = media::video_payload(tag, counter, i == 0, key, size);
                                write(track, video_seq, ts, i + 1 == n, payload).await;
                                video_seq = video_seq.wrapping_add(1);
                            }
                        }
                        frame += 1;
                    }
                }
            }
        }));
    }

    pub fn stop_media(&self) {
        self.stop_media.store(true, Ordering::SeqCst);
    }

    /// True once the media task has seen the stop and will write nothing more.
    pub fn media_stopped(&self) -> bool {
        self.shared.media_stopped.load(Ordering::SeqCst)
    }

    pub fn send(&self, v: Value) {
        self.send_text(v.to_string());
    }

    pub fn send_text(&self, text: String) {
        let _ = self.out.send(Message::Text(text.into()));
    }

    /// The queue to this client's WebSocket writer, for sending from another task (floods).
    pub fn sender(&self) -> mpsc::UnboundedSender<Message> {
        self.out.clone()
    }

    pub fn send_binary(&self, bytes: Vec<u8>) {
        let _ = self.out.send(Message::Binary(bytes.into()));
    }

    pub fn messages(&self) -> Vec<Value> {
        self.shared.messages.lock().unwrap().clone()
    }

    pub fn messages_of(&self, kind: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m["type"] == kind)
            .collect()
    }

    /// Waits for a message for which `pred` holds; returns it.
    pub async fn wait_message(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut found = None;
        wait_for(&format!("{} to receive {what}", self.name), timeout, || {
            found = self.messages().into_iter().find(|m| pred(m));
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// Waits for the next error message after the first `skip` errors; returns its code.
    pub async fn wait_error(&self, skip: usize, timeout: Duration) -> Value {
        let mut found = None;
        wait_for(
            &format!("{} to receive error #{}", self.name, skip + 1),
            timeout,
            || {
                found = self.messages_of("error").into_iter().nth(skip);
                found.is_some()
            },
        )
        .await;
        found.unwrap()
    }

    pub async fn participant_id(&self) -> String {
        let joined = self
            .wait_message("joined", Duration::from_secs(10), |m| m["type"] == "joined")
            .await;
        joined["participant_id"].as_str().unwrap().to_owned()
    }

    /// Packets received so far on all tracks (cheap: no copy, no lock).
    pub fn received_count(&self) -> u64 {
        self.shared.received_count.load(Ordering::Relaxed)
    }

    /// Remote tracks received so far: a copy of everything recorded, so it is not for hot
    /// loops (while it copies, the tracks' readers wait for the lock).
    pub fn received(&self) -> HashMap<String, RecvTrack> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Number of remote tracks from which at least `min_packets` arrived.
    pub fn flowing_tracks(&self, min_packets: usize) -> usize {
        self.shared
            .received
            .lock()
            .unwrap()
            .values()
            .filter(|t| t.packets.len() >= min_packets)
            .count()
    }

    pub fn sent_counter(&self, video: bool) -> u64 {
        let t = if video { &self.video } else { &self.audio };
        t.as_ref()
            .map(|t| t.counter.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    /// Applies the latest offer and returns the answer's SDP without sending it.
    pub async fn answer_offer(&self) -> String {
        let offer = self
            .messages_of("offer")
            .pop()
            .expect("an offer was received");
        let sdp = answer(&self.pc, &self.shared, &offer)
            .await
            .expect("the offer applies");
        let early = std::mem::take(&mut *self.shared.early_candidates.lock().unwrap());
        for init in early {
            let _ = self.pc.add_ice_candidate(init).await;
        }
        sdp
    }

    pub fn leave(&self) {
        self.send(json!({"type": "leave"}));
    }

    /// Cuts the media path as a network failure would: the UDP socket closes, the WebSocket
    /// stays open.
    pub fn cut_network(&self) {
        self.stop_media();
        self.net.cut.store(true, Ordering::SeqCst);
    }

    /// Drops the WebSocket without a close frame, as a crashed browser would.
    pub fn kill_socket(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    pub async fn close(self) {
        self.stop_media();
        let _ = self.pc.close().await;
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.mux.close().await;
    }
}

/// A UDP socket on 127.0.0.1 with a large receive buffer (as large as the kernel allows): a
/// client receiving dozens of streams must not lose packets in its own socket queue.
fn loopback_socket() -> tokio::net::UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("a UDP socket");
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true).expect("nonblocking");
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    socket.bind(&addr.into()).expect("bind 127.0.0.1:0");
    tokio::net::UdpSocket::from_std(socket.into()).expect("inside a Tokio runtime")
}

/// How many packets of which payload size one video frame takes.
fn frame_shape(opts: &ClientOptions, key: bool) -> (usize, usize) {
    const MAX_PAYLOAD: usize = 1100;
    let Some(bitrate) = opts.video_bitrate else {
        let n = if key {
            opts.key_packets
        } else {
            opts.delta_packets
        };
        return (n, opts.video_packet_size);
    };
    // Over one keyframe interval of k frames: (k - 1) deltas of d bytes and one key of 6d
    // average to bitrate / 8 / fps bytes a frame.
    let k = opts.keyframe_every.max(1) as f64;
    let average = bitrate as f64 / 8.0 / opts.video_fps.max(1) as f64;
    let delta = average * k / (k + 5.0);
    let bytes = if key { delta * 6.0 } else { delta } as usize;
    let n = bytes.div_ceil(MAX_PAYLOAD).max(1);
    (n, (bytes / n).max(64))
}

/// Applies an offer message and creates and applies the answer; returns the answer's SDP.
async fn answer(pc: &RTCPeerConnection, shared: &Shared, offer: &Value) -> Option<String> {
    shared.bind_mids(offer);
    let sdp = offer["sdp"].as_str()?.to_owned();
    let offer = RTCSessionDescription::offer(sdp).ok()?;
    pc.set_remote_description(offer).await.ok()?;
    let answer = pc.create_answer(None).await.ok()?;
    let sdp = answer.sdp.clone();
    pc.set_local_description(answer).await.ok()?;
    Some(sdp)
}

async fn write(track: &TrackLocalStaticRTP, seq: u16, ts: u32, marker: bool, payload: Vec<u8>) {
    let packet = webrtc::rtp::packet::Packet {
        header: webrtc::rtp::header::Header {
            version: 2,
            marker,
            sequence_number: seq,
            timestamp: ts,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    };
    let _ = track.write_rtp(&packet).await;
}
