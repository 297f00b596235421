//! One peer connection: setup from the engine's shared settings, offer/answer, candidates,
//! incoming tracks (ingest), outgoing tracks (egress) and their RTCP.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use webrtc::api::interceptor_registry::configure_twcc_receiver_only;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::{RTCPFeedback, RTCRtpTransceiver, RTCRtpTransceiverInit};
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

use super::candidates::RemoteCandidates;
use super::egress::{DirectEgressBuilder, OutgoingStreams};
use super::track::ForwardedTrack;
use super::{RtcEngine, RtcError};
use crate::forward::{MediaKind, RtpPacket};
use crate::metrics::{Metrics, TaskGuard};

/// Room for one incoming RTP packet: webrtc-rs's default receive MTU.
const INGEST_BUFFER_BYTES: usize = 1460;

/// An ICE candidate as the browser's `RTCIceCandidateInit` dictionary spells it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

/// A codec as negotiated for a track: what a subscriber's copy must be declared with.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecSpec {
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
    rtcp_feedback: Vec<(String, String)>,
}

/// What happens on a peer connection, delivered in order to its owner.
#[derive(Debug)]
pub enum PeerEvent {
    /// A local candidate to trickle; `None` once gathering is complete.
    LocalCandidate(Option<IceCandidate>),
    State(PeerState),
    /// Media started arriving on the transceiver with this mid.
    Track(IncomingTrack),
    /// Media arrived on a receiving transceiver that was reused for another publication after
    /// its first ended ([`Peer::reuse_incoming`]). webrtc-rs fires no new track for it (the
    /// publisher's SSRC on that transceiver stays the same), so the owner's ingest sink, which
    /// sees which publication its packets are for, reports it.
    TrackResumed {
        mid: String,
    },
}

/// Feedback from a subscriber about one of our outgoing tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    Pli,
    Fir,
    /// The sequence numbers (as the subscriber saw them) it asks to be sent again.
    Nack(Vec<u16>),
}

/// A published track that started arriving: call [`IncomingTrack::start_ingest`] to read it.
pub struct IncomingTrack {
    pub mid: String,
    /// The spatial layer (0 = lowest) of a simulcast stream; 0 for a single encoding.
    pub layer: u8,
    pub kind: MediaKind,
    pub ssrc: u32,
    pub codec: CodecSpec,
    remote: Arc<TrackRemote>,
    receiver: Arc<webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver>,
    /// The connection's media worker, where the track is read.
    runtime: Handle,
    heard: Arc<MediaHeard>,
}

/// When RTP last arrived on any of a connection's incoming tracks: a publisher whose tracks
/// fall silent while its connection stays up has lost its media path (see
/// [`Peer::media_heard_at`]).
pub struct MediaHeard {
    origin: std::time::Instant,
    /// Milliseconds after `origin`, plus one; 0 until the first packet.
    last: std::sync::atomic::AtomicU64,
}

impl MediaHeard {
    fn new() -> Self {
        Self {
            origin: std::time::Instant::now(),
            last: Default::default(),
        }
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64 + 1;
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn last_at(&self) -> Option<std::time::Instant> {
        match self.last.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(self.origin + Duration::from_millis(ms - 1)),
        }
    }
}

impl std::fmt::Debug for IncomingTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingTrack")
            .field("mid", &self.mid)
            .field("kind", &self.kind)
            .field("ssrc", &self.ssrc)
            .field("codec", &self.codec.mime_type)
            .finish()
    }
}

impl IncomingTrack {
    /// Reads RTP until the track ends, handing each packet to `sink` (which returns false to
    /// stop). Also drains the receiver's RTCP, without which the interceptors that build
    /// receiver reports and NACKs never see the publisher's sender reports.
    pub fn start_ingest<F>(self, mut sink: F, guards: (TaskGuard, TaskGuard))
    where
        F: FnMut(RtpPacket) -> bool + Send + 'static,
    {
        let (rtp_guard, rtcp_guard) = guards;
        let (remote, heard) = (self.remote, self.heard);
        self.runtime.spawn(async move {
            let _guard = rtp_guard;
            // One buffer for the track's life: `read_rtp` would allocate and zero a fresh one
            // per packet. The packet's payload is copied out of it, so it can be reused.
            let mut buffer = vec![0u8; INGEST_BUFFER_BYTES];
            while let Ok((packet, _)) = remote.read(&mut buffer).await {
                heard.touch();
                let h = packet.header;
                let ours = RtpPacket {
                    payload_type: h.payload_type,
                    sequence_number: h.sequence_number,
                    timestamp: h.timestamp,
                    ssrc: h.ssrc,
                    marker: h.marker,
                    payload: packet.payload,
                };
                if !sink(ours) {
                    break;
                }
            }
        });
        let receiver = self.receiver;
        self.runtime.spawn(async move {
            let _guard = rtcp_guard;
            while receiver.read_rtcp().await.is_ok() {}
        });
    }
}

/// A recvonly transceiver we offered for a participant to publish on.
#[derive(Clone)]
pub struct IncomingSlot {
    transceiver: Arc<RTCRtpTransceiver>,
}

impl IncomingSlot {
    /// Known once an offer including it has been created.
    pub fn mid(&self) -> Option<String> {
        self.transceiver.mid().map(|m| m.to_string())
    }
}

/// One subscriber's copy of a published track, sent on this peer connection.
#[derive(Clone)]
pub struct OutgoingTrack {
    track: Arc<ForwardedTrack>,
    transceiver: Arc<RTCRtpTransceiver>,
}

impl OutgoingTrack {
    pub fn mid(&self) -> Option<String> {
        self.transceiver.mid().map(|m| m.to_string())
    }

    pub fn writer(&self) -> EgressWriter {
        EgressWriter {
            track: self.track.clone(),
        }
    }
}

/// Writes our packets onto one outgoing track, with the subscriber's SSRC and payload type,
/// straight into SRTP (`egress.rs`).
#[derive(Clone)]
pub struct EgressWriter {
    track: Arc<ForwardedTrack>,
}

impl EgressWriter {
    pub fn kind(&self) -> MediaKind {
        match self.track.kind() {
            RTPCodecType::Audio => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }

    /// The outgoing stream this writes to: the same for every track a recycled transceiver
    /// carries in turn (see [`Peer::park_outgoing`]).
    pub fn stream_key(&self) -> u64 {
        self.track.stream_key()
    }

    /// Sends `packet` at `now`. Returns the bytes written, 0 when the track is not bound (yet
    /// or any more).
    pub async fn write(&self, packet: &RtpPacket, now: std::time::Instant) -> usize {
        self.track.write(packet, now).await
    }
}

/// One participant's peer connection. Dropping it without [`Peer::close`] leaks webrtc-rs
/// tasks until they notice; owners always close.
pub struct Peer {
    pc: Arc<RTCPeerConnection>,
    /// The media worker this connection runs on (its room's): every call into webrtc-rs that
    /// may start tasks runs there, so that they all live on that worker (`room/workers.rs`).
    runtime: Handle,
    /// Its outgoing streams' SRTP writers, for the tracks it sends.
    outgoing_streams: Arc<OutgoingStreams>,
    candidates: Arc<RemoteCandidates>,
    /// Receiving transceivers whose m-lines ask for simulcast in every offer.
    simulcast_slots: std::sync::Mutex<Vec<Arc<RTCRtpTransceiver>>>,
    /// The offer as the client got it (amended for simulcast): what its answer is checked
    /// against.
    sent_offer: std::sync::Mutex<Option<String>>,
    heard: Arc<MediaHeard>,
    metrics: Metrics,
    _counted: PeerCounted,
}

/// Counts a live peer connection, and which state it is in, until dropped.
struct PeerCounted {
    metrics: Metrics,
    state: Arc<std::sync::Mutex<&'static str>>,
}

impl PeerCounted {
    fn new(metrics: Metrics) -> Self {
        metrics.peer_connections.inc();
        metrics
            .peer_connection_states
            .with_label_values(&["new"])
            .inc();
        Self {
            metrics,
            state: Arc::new(std::sync::Mutex::new("new")),
        }
    }

    /// A closure that moves the count from the previous state to `next`.
    fn tracker(&self) -> impl Fn(&'static str) + Send + Sync + 'static {
        let (metrics, state) = (self.metrics.clone(), self.state.clone());
        move |next| {
            let mut current = state.lock().expect("state lock is never poisoned");
            if *current != next {
                metrics
                    .peer_connection_states
                    .with_label_values(&[*current])
                    .dec();
                metrics
                    .peer_connection_states
                    .with_label_values(&[next])
                    .inc();
                *current = next;
            }
        }
    }
}

impl Drop for PeerCounted {
    fn drop(&mut self) {
        self.metrics.peer_connections.dec();
        let current = *self.state.lock().expect("state lock is never poisoned");
        self.metrics
            .peer_connection_states
            .with_label_values(&[current])
            .dec();
    }
}

impl RtcEngine {
    /// Builds a peer connection whose events go to `events`, running on the media worker
    /// `runtime`.
    pub async fn new_peer(
        &self,
        events: mpsc::UnboundedSender<PeerEvent>,
        runtime: Handle,
    ) -> Result<Peer, RtcError> {
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        // Simulcast receive: without these webrtc-rs cannot tell a publisher's layers apart.
        for uri in [
            webrtc::sdp::extmap::SDES_MID_URI,
            webrtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
            webrtc::sdp::extmap::SDES_REPAIR_RTP_STREAM_ID_URI,
        ] {
            media.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                RTPCodecType::Video,
                Some(RTCRtpTransceiverDirection::Recvonly),
            )?;
        }
        let outgoing_streams = Arc::new(OutgoingStreams::default());
        let registry = register_interceptors(
            Registry::new(),
            &mut media,
            &self.metrics,
            outgoing_streams.clone(),
        )?;

        let mut settings = SettingEngine::default();
        settings.set_udp_network(self.udp_network());
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        settings.set_lite(self.ice_lite);
        settings.set_ice_timeouts(
            Some(self.ice_disconnected),
            Some(self.ice_failed),
            Some(Duration::from_secs(2)),
        );
        let mut network_types = vec![NetworkType::Udp4];
        if self.udp_addr.is_ipv6() {
            network_types.push(NetworkType::Udp6);
        }
        settings.set_network_types(network_types);
        settings.set_include_loopback_candidate(true);
        // Nominate a working pair at once. We are the controlling agent (we offer), and a
        // client is usually first seen as peer-reflexive (its trickled candidate arrives after
        // its first check; browsers' mDNS candidates never resolve): webrtc-ice would wait 1 s
        // for a better pair before nominating such a candidate, which delays every join.
        settings.set_host_acceptance_min_wait(Some(Duration::ZERO));
        settings.set_srflx_acceptance_min_wait(Some(Duration::ZERO));
        settings.set_prflx_acceptance_min_wait(Some(Duration::ZERO));
        if !self.advertise_ips.is_empty() {
            // Advertise exactly the configured addresses: gather from the loopback address only
            // (present on every host) and map it 1:1, so each address appears once, whatever
            // interfaces the host or container has. Exactly 127.0.0.1 and ::1: with more
            // loopback addresses (127.0.0.2, ...) webrtc-ice maps none and offers no candidate.
            settings.set_ip_filter(Box::new(|ip| {
                ip == std::net::IpAddr::from([127, 0, 0, 1]) || ip == std::net::Ipv6Addr::LOCALHOST
            }));
            settings.set_nat_1to1_ips(self.advertise_ips.clone(), RTCIceCandidateType::Host);
        }

        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .build();
        let pc = Arc::new(
            on_worker(&runtime, async move {
                api.new_peer_connection(RTCConfiguration::default()).await
            })
            .await??,
        );
        let counted = PeerCounted::new(self.metrics.clone());
        let track_state = counted.tracker();

        let tx = events.clone();
        pc.on_ice_candidate(Box::new(move |candidate| {
            let event = match candidate.map(|c| c.to_json()) {
                Some(Ok(init)) => PeerEvent::LocalCandidate(Some(IceCandidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_m_line_index: init.sdp_mline_index,
                    username_fragment: init.username_fragment,
                })),
                Some(Err(_)) => return Box::pin(async {}),
                None => PeerEvent::LocalCandidate(None),
            };
            let _ = tx.send(event);
            Box::pin(async {})
        }));
        let tx = events.clone();
        pc.on_peer_connection_state_change(Box::new(move |state| {
            track_state(match state {
                RTCPeerConnectionState::Connecting => "connecting",
                RTCPeerConnectionState::Connected => "connected",
                RTCPeerConnectionState::Disconnected => "disconnected",
                RTCPeerConnectionState::Failed => "failed",
                RTCPeerConnectionState::Closed => "closed",
                _ => "new",
            });
            let state = match state {
                RTCPeerConnectionState::Connected => Some(PeerState::Connected),
                RTCPeerConnectionState::Disconnected => Some(PeerState::Disconnected),
                RTCPeerConnectionState::Failed => Some(PeerState::Failed),
                RTCPeerConnectionState::Closed => Some(PeerState::Closed),
                RTCPeerConnectionState::Connecting => Some(PeerState::Connecting),
                _ => None,
            };
            if let Some(state) = state {
                let _ = tx.send(PeerEvent::State(state));
            }
            Box::pin(async {})
        }));
        let tx = events;
        let track_runtime = runtime.clone();
        let heard = Arc::new(MediaHeard::new());
        let track_heard = heard.clone();
        pc.on_track(Box::new(move |remote, receiver, transceiver| {
            let codec = remote.codec().capability;
            let Some(layer) = super::simulcast::layer_of_rid(remote.rid()) else {
                // The answer check lets only offered rids through; anything else is not read.
                return Box::pin(async {});
            };
            let track = IncomingTrack {
                layer,
                mid: transceiver.mid().map(|m| m.to_string()).unwrap_or_default(),
                kind: match remote.kind() {
                    RTPCodecType::Audio => MediaKind::Audio,
                    _ => MediaKind::Video,
                },
                ssrc: remote.ssrc(),
                codec: CodecSpec {
                    mime_type: codec.mime_type,
                    clock_rate: codec.clock_rate,
                    channels: codec.channels,
                    fmtp: codec.sdp_fmtp_line,
                    rtcp_feedback: codec
                        .rtcp_feedback
                        .into_iter()
                        .map(|f| (f.typ, f.parameter))
                        .collect(),
                },
                remote,
                receiver,
                runtime: track_runtime.clone(),
                heard: track_heard.clone(),
            };
            let _ = tx.send(PeerEvent::Track(track));
            Box::pin(async {})
        }));

        Ok(Peer {
            pc,
            runtime,
            outgoing_streams,
            candidates: Arc::default(),
            simulcast_slots: Default::default(),
            sent_offer: Default::default(),
            heard,
            metrics: self.metrics.clone(),
            _counted: counted,
        })
    }
}

impl Peer {
    /// Offers a recvonly transceiver for the participant to publish one track on; with
    /// `simulcast` (video only) the offer asks for the layers of [`super::simulcast`].
    pub async fn add_incoming(
        &self,
        kind: MediaKind,
        simulcast: bool,
    ) -> Result<IncomingSlot, RtcError> {
        let pc = self.pc.clone();
        let transceiver = on_worker(&self.runtime, async move {
            pc.add_transceiver_from_kind(
                codec_type(kind),
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: vec![],
                }),
            )
            .await
        })
        .await??;
        if simulcast && kind == MediaKind::Video {
            self.simulcast_slots
                .lock()
                .unwrap()
                .push(transceiver.clone());
        }
        Ok(IncomingSlot { transceiver })
    }

    /// Receives on a slot again, for another publication of the same kind: the next offer
    /// marks it recvonly, and the `mids` table of that offer names the new `cid`. Its ingest
    /// (when it ran before) goes on reading the same track; see [`PeerEvent::TrackResumed`].
    pub async fn reuse_incoming(&self, slot: &IncomingSlot) -> Result<(), RtcError> {
        let transceiver = slot.transceiver.clone();
        on_worker(&self.runtime, async move {
            transceiver
                .set_direction(RTCRtpTransceiverDirection::Recvonly)
                .await
        })
        .await
    }

    /// Stops receiving on a slot: the next offer marks it inactive.
    pub async fn stop_incoming(&self, slot: &IncomingSlot) {
        let transceiver = slot.transceiver.clone();
        let _ = on_worker(&self.runtime, async move {
            transceiver
                .set_direction(RTCRtpTransceiverDirection::Inactive)
                .await
        })
        .await;
    }

    /// Adds a sendonly track carrying a copy of someone's published track. Its RTCP is drained
    /// in a task that reports keyframe requests and NACKs to `feedback` until the track ends.
    pub async fn add_outgoing<F>(
        &self,
        track_id: String,
        stream_id: String,
        kind: MediaKind,
        codec: &CodecSpec,
        mut feedback: F,
        guard: TaskGuard,
    ) -> Result<OutgoingTrack, RtcError>
    where
        F: FnMut(Feedback) + Send + 'static,
    {
        let capability = RTCRtpCodecCapability {
            mime_type: codec.mime_type.clone(),
            clock_rate: codec.clock_rate,
            channels: codec.channels,
            sdp_fmtp_line: codec.fmtp.clone(),
            rtcp_feedback: codec
                .rtcp_feedback
                .iter()
                .map(|(typ, parameter)| RTCPFeedback {
                    typ: typ.clone(),
                    parameter: parameter.clone(),
                })
                .collect(),
        };
        let track = Arc::new(ForwardedTrack::new(
            capability.clone(),
            track_id,
            stream_id,
            self.outgoing_streams.clone(),
        ));
        debug_assert_eq!(codec_type(kind), track.kind());
        let (pc, local) = (self.pc.clone(), track.clone());
        let (transceiver, sender, ssrc) = on_worker(&self.runtime, async move {
            let transceiver = pc
                .add_transceiver_from_track(
                    local as Arc<dyn TrackLocal + Send + Sync>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        send_encodings: vec![],
                    }),
                )
                .await?;
            // Offer only the codec the track carries: a forwarded track cannot be sent in any
            // other. Listing every codec the engine knows made each m-line some 150 SDP lines,
            // which webrtc-rs parses and keeps with each description: a third of a subscriber's
            // memory, and most of the work of each negotiation. (Payload type 0: the engine's.)
            transceiver
                .set_codec_preferences(vec![RTCRtpCodecParameters {
                    capability,
                    payload_type: 0,
                    stats_id: String::new(),
                }])
                .await?;
            let sender = transceiver.sender().await;
            // webrtc-rs hands a whole compound RTCP packet to every sender whose SSRC appears
            // in it, so each loop keeps only what is about its own stream.
            let ssrc = sender
                .get_parameters()
                .await
                .encodings
                .first()
                .map(|e| e.ssrc)
                .unwrap_or_default();
            Ok::<_, webrtc::Error>((transceiver, sender, ssrc))
        })
        .await??;
        let metrics = self.metrics.clone();
        let clock_rate = codec.clock_rate;
        self.runtime.spawn(async move {
            let _guard = guard;
            while let Ok((packets, _)) = sender.read_rtcp().await {
                for packet in packets {
                    let any = packet.as_any();
                    if let Some(rr) = any.downcast_ref::<rtcp::receiver_report::ReceiverReport>() {
                        observe_reports(&metrics, &rr.reports, ssrc, clock_rate);
                    } else if let Some(sr) = any.downcast_ref::<rtcp::sender_report::SenderReport>()
                    {
                        observe_reports(&metrics, &sr.reports, ssrc, clock_rate);
                    } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                        if pli.media_ssrc == ssrc {
                            feedback(Feedback::Pli);
                        }
                    } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                        if fir.fir.iter().any(|entry| entry.ssrc == ssrc) {
                            feedback(Feedback::Fir);
                        }
                    } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                        if nack.media_ssrc == ssrc {
                            feedback(Feedback::Nack(lost_sequence_numbers(nack)));
                        }
                    }
                }
            }
        });
        Ok(OutgoingTrack { track, transceiver })
    }

    /// Stops sending a track and keeps its transceiver for the next track of the same codec
    /// ([`Self::reuse_outgoing`]): the next offer marks its m-line inactive.
    ///
    /// Recycling is what keeps a long drop-in room alive: a removed m-line stays in every
    /// later offer (JSEP never deletes one), so a connection that got a fresh transceiver per
    /// track grew by an m-line per visitor's track, ~1 KiB of SDP that every renegotiation
    /// parsed again, until negotiation took longer than the room could wait. Reusing them
    /// keeps a connection's size to the most tracks it ever received at once.
    ///
    /// The sender is not stopped (`remove_track` would, for good: a stopped sender never
    /// sends again) nor unbound (webrtc-rs cannot bind a track to a sender without one), so
    /// the track stays bound, and the transceiver's direction alone keeps it silent: webrtc-rs
    /// pauses the sender once the subscriber has answered, and the room no longer writes to it.
    pub async fn park_outgoing(&self, track: &OutgoingTrack) {
        let transceiver = track.transceiver.clone();
        let _ = on_worker(&self.runtime, async move {
            transceiver
                .set_direction(RTCRtpTransceiverDirection::Inactive)
                .await
        })
        .await;
    }

    /// Sends on a parked transceiver again: the next offer marks its m-line sendonly, and the
    /// `mids` table of that offer names the track it now carries.
    pub async fn reuse_outgoing(&self, track: &OutgoingTrack) -> Result<(), RtcError> {
        let transceiver = track.transceiver.clone();
        on_worker(&self.runtime, async move {
            transceiver
                .set_direction(RTCRtpTransceiverDirection::Sendonly)
                .await
        })
        .await
    }

    /// Creates an offer and applies it locally; returns its SDP.
    pub async fn create_offer(&self) -> Result<String, RtcError> {
        let pc = self.pc.clone();
        let sdp = on_worker(&self.runtime, async move {
            let offer = pc.create_offer(None).await?;
            let sdp = offer.sdp.clone();
            pc.set_local_description(offer).await?;
            Ok::<_, webrtc::Error>(sdp)
        })
        .await??;
        let simulcast_mids: Vec<String> = {
            let slots = self.simulcast_slots.lock().unwrap();
            slots
                .iter()
                .filter_map(|t| t.mid().map(|m| m.to_string()))
                .collect()
        };
        let sdp = super::simulcast::ask_for_simulcast(&sdp, &simulcast_mids);
        *self.sent_offer.lock().unwrap() = Some(sdp.clone());
        Ok(sdp)
    }

    /// Applies the remote answer to our last offer.
    ///
    /// The answer is checked against the offer first (`answer.rs`): webrtc-rs applies some
    /// answers it cannot negotiate after, and consumes the offer before some of its own checks.
    pub async fn apply_answer(&self, sdp: String) -> Result<(), RtcError> {
        let pc = self.pc.clone();
        let sent = self.sent_offer.lock().unwrap().clone();
        on_worker(&self.runtime, async move {
            let offer = pc
                .pending_local_description()
                .await
                .ok_or_else(|| RtcError::BadDescription("no offer is outstanding".into()))?;
            let offer = sent.unwrap_or(offer.sdp);
            super::answer::check_answer(&offer, &sdp).map_err(RtcError::BadDescription)?;
            let answer = RTCSessionDescription::answer(sdp)
                .map_err(|e| RtcError::BadDescription(e.to_string()))?;
            pc.set_remote_description(answer)
                .await
                .map_err(|e| RtcError::BadDescription(e.to_string()))
        })
        .await?
    }

    /// Checks one of the client's trickled candidates; the server never contacts it (see
    /// `candidates.rs`).
    pub fn add_remote_candidate(&self, c: IceCandidate) -> Result<(), RtcError> {
        self.candidates.add(&c)
    }

    /// True while our last offer still waits for its answer.
    pub fn awaiting_answer(&self) -> bool {
        use webrtc::peer_connection::signaling_state::RTCSignalingState;
        self.pc.signaling_state() == RTCSignalingState::HaveLocalOffer
    }

    /// Asks the publisher for a keyframe on `ssrc` with a PLI.
    pub async fn request_keyframe(&self, ssrc: u32) {
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        let pc = self.pc.clone();
        let sent = on_worker(&self.runtime, async move {
            pc.write_rtcp(&[Box::new(pli)]).await
        });
        if let Ok(Ok(_)) = sent.await {
            self.metrics
                .keyframe_requests
                .with_label_values(&["out", "pli"])
                .inc();
        }
    }

    /// When RTP last arrived on any incoming track of this connection; `None` before the first.
    pub fn media_heard_at(&self) -> Option<std::time::Instant> {
        self.heard.last_at()
    }

    pub fn is_connected(&self) -> bool {
        self.pc.connection_state() == RTCPeerConnectionState::Connected
    }

    pub async fn close(&self) {
        let pc = self.pc.clone();
        // A stopped worker (the server is shutting down) drops the connection's tasks itself.
        let closed = on_worker(&self.runtime, async move { pc.close().await })
            .await
            .and_then(|closed| closed.map_err(RtcError::from));
        if let Err(e) = closed {
            tracing::debug!(error = %e, "closing peer connection");
        }
    }
}

/// Runs `work` on the media worker `runtime` and waits for it. Signalling-rate calls only:
/// each is a task and a wake-up across threads.
async fn on_worker<T: Send + 'static>(
    runtime: &Handle,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, RtcError> {
    runtime
        .spawn(work)
        .await
        .map_err(|_| RtcError::WorkerStopped)
}

fn observe_reports(
    metrics: &Metrics,
    reports: &[rtcp::reception_report::ReceptionReport],
    ssrc: u32,
    clock_rate: u32,
) {
    for report in reports.iter().filter(|r| r.ssrc == ssrc) {
        super::telemetry::observe_reception_report(metrics, report, clock_rate);
    }
}

/// Expands a NACK's (packet id, bitmask) pairs into sequence numbers (RFC 4585 6.2.1).
fn lost_sequence_numbers(nack: &TransportLayerNack) -> Vec<u16> {
    let mut seqs = Vec::new();
    for pair in &nack.nacks {
        seqs.push(pair.packet_id);
        for bit in 0..16u16 {
            if pair.lost_packets & (1 << bit) != 0 {
                seqs.push(pair.packet_id.wrapping_add(bit + 1));
            }
        }
    }
    seqs
}

/// The interceptors every peer connection gets: direct egress with its sender reports (first,
/// so that it is handed the SRTP writers; see `egress.rs`), NACK generation (we ask publishers
/// to resend), receiver reports, and transport-wide congestion feedback to publishers so their
/// bandwidth estimation can ramp up. NACKs from subscribers are answered by our own egress
/// history instead of webrtc-rs's responder, whose 0.17 send buffer drops its newest packets
/// whenever an older one (a publisher's retransmission we forward late) is written after them.
fn register_interceptors(
    mut registry: Registry,
    media: &mut MediaEngine,
    metrics: &Metrics,
    outgoing_streams: Arc<OutgoingStreams>,
) -> Result<Registry, webrtc::Error> {
    registry.add(Box::new(DirectEgressBuilder {
        streams: outgoing_streams,
    }));
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RTPCodecType::Video,
        );
    }
    registry.add(Box::new(super::telemetry::FeedbackCounterBuilder {
        nacks_sent: metrics.nacks_sent.with_label_values(&["publisher"]),
    }));
    registry.add(Box::new(
        webrtc::interceptor::nack::generator::Generator::builder(),
    ));
    registry.add(Box::new(
        webrtc::interceptor::report::receiver::ReceiverReport::builder(),
    ));
    configure_twcc_receiver_only(registry, media)
}

fn codec_type(kind: MediaKind) -> RTPCodecType {
    match kind {
        MediaKind::Audio => RTPCodecType::Audio,
        MediaKind::Video => RTPCodecType::Video,
    }
}
