//! The HTTP edge and the server's lifecycle: `app(state)` is the whole router (tested with
//! `oneshot`), `run` binds the sockets and serves until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::services::ServeDir;

use crate::config::Config;
use crate::forward::IdAllocator;
use crate::metrics::Metrics;
use crate::room::{Registry, Workers};
use crate::rtc::{RtcEngine, RtcError};
use crate::signal::run_session;

/// Everything a request or session needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub rtc: Arc<RtcEngine>,
    pub ids: Arc<IdAllocator>,
    pub lifecycle: Arc<Lifecycle>,
}

/// Whether the server is draining: once it is, `/readyz` fails, new joins are refused and
/// every session is told to end.
pub struct Lifecycle {
    draining: watch::Sender<bool>,
}

impl Lifecycle {
    fn new() -> Self {
        Self {
            draining: watch::Sender::new(false),
        }
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub fn begin_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Resolves once draining has begun.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.draining.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }
}

impl AppState {
    /// Builds the state and binds the media UDP socket.
    pub fn new(config: Config) -> Result<AppState, crate::rtc::RtcError> {
        let metrics = Metrics::new();
        let rtc = RtcEngine::bind(&config, metrics.clone())?;
        let workers = Workers::start(config.media.workers, &metrics).map_err(RtcError::Workers)?;
        Ok(AppState {
            registry: Arc::new(Registry::new(&config, metrics.clone(), workers)),
            rtc: Arc::new(rtc),
            ids: Arc::new(IdAllocator::default()),
            lifecycle: Arc::new(Lifecycle::new()),
            metrics,
            config: Arc::new(config),
        })
    }
}

pub fn app(state: AppState) -> Router {
    let static_files = ServeDir::new(&state.config.http.static_dir);
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if state.config.metrics_listen_addr().is_none() {
        router = router.route("/metrics", get(metrics));
    }
    router
        .route("/api/rooms", get(rooms))
        .route("/ws", get(websocket))
        .fallback_service(static_files)
        .with_state(state)
}

/// Ready to take calls: the media socket is bound (it is before the server starts) and the
/// server is not draining.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(serde::Serialize)]
struct RoomListing {
    name: String,
    participants: usize,
}

/// The rooms that are live now, for the lobby: `{"rooms":[{"name","participants"}]}`.
async fn rooms(State(state): State<AppState>) -> Response {
    let rooms: Vec<RoomListing> = state
        .registry
        .list()
        .into_iter()
        .map(|(name, participants)| RoomListing { name, participants })
        .collect();
    axum::Json(serde_json::json!({ "rooms": rooms })).into_response()
}

async fn websocket(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    if state.lifecycle.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
            .into_response();
    }
    // The transport's own cap sits well above the protocol limit so that an oversized message
    // still arrives and gets a `message-too-large` error instead of a dropped connection.
    let hard_cap = (state.config.limits.max_message_bytes * 4).max(1 << 20);
    ws.max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        // Signalling messages are small and rare: tungstenite's default 128 KiB read buffer per
        // connection is most of a participant's memory budget. Larger messages still arrive
        // (the buffer grows); each message is written out at once, as axum flushes anyway.
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| run_session(socket, state))
}

/// The router of the separate metrics listener (`http.metrics_listen`).
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A running server: its addresses, and its state (for tests that read metrics directly).
pub struct Running {
    pub http_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub udp_addr: SocketAddr,
    pub state: AppState,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds HTTP and UDP and serves in the background until `shutdown` resolves; then drains:
/// sessions are told and closed, and the HTTP server stops once they are gone or
/// `timeouts.shutdown_ms` has passed, whichever comes first.
pub async fn start(
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    if !config.rtc.stun_discovery.is_empty() {
        let ip = crate::rtc::stun::discover_public_ip(&config.rtc.stun_discovery).await?;
        tracing::info!(%ip, server = %config.rtc.stun_discovery, "public address discovered");
        if !config.rtc.advertise_ips.contains(&ip.to_string()) {
            config.rtc.advertise_ips.push(ip.to_string());
        }
    }
    let state = AppState::new(config)?;
    let listener = tokio::net::TcpListener::bind(state.config.listen_addr()).await?;
    let http_addr = listener.local_addr()?;
    let udp_addr = state.rtc.udp_addr();
    tracing::info!(http = %http_addr, udp = %udp_addr, "plaza listening");
    let router = app(state.clone());
    let metrics_addr = match state.config.metrics_listen_addr() {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            tracing::info!(metrics = %bound, "metrics listening");
            let metrics_router = metrics_app(state.clone());
            // Scrapes go on while draining; this listener ends with the process.
            tokio::spawn(async move { axum::serve(listener, metrics_router).await });
            Some(bound)
        }
        None => None,
    };
    let drain_state = state.clone();
    let stopped = async move {
        shutdown.await;
        let st = drain_state;
        st.lifecycle.begin_draining();
        tracing::info!("draining: closing every session");
        let bound = Duration::from_millis(st.config.timeouts.shutdown_ms);
        let sessions_gone = async {
            while st.metrics.tasks.with_label_values(&["session"]).get() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(bound, sessions_gone).await.is_err() {
            tracing::warn!("shutdown timeout reached with sessions still open");
        }
    };
    let done = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
    });
    Ok(Running {
        http_addr,
        metrics_addr,
        udp_addr,
        state,
        done,
    })
}
