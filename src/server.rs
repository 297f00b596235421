//! The HTTP edge and the server's lifecycle: `app(state)` is the whole router (tested with
//! `oneshot`), `run` binds the sockets and serves until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{State, WebSocketUpgrade};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::services::ServeDir;

use crate::config::Config;
use crate::forward::IdAllocator;
use crate::metrics::Metrics;
use crate::room::Registry;
use crate::rtc::RtcEngine;
use crate::signal::run_session;

/// Everything a request or session needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub rtc: Arc<RtcEngine>,
    pub ids: Arc<IdAllocator>,
}

impl AppState {
    /// Builds the state and binds the media UDP socket.
    pub fn new(config: Config) -> Result<AppState, crate::rtc::RtcError> {
        let metrics = Metrics::new();
        let rtc = RtcEngine::bind(&config, metrics.clone())?;
        Ok(AppState {
            registry: Arc::new(Registry::new(&config, metrics.clone())),
            rtc: Arc::new(rtc),
            ids: Arc::new(IdAllocator::default()),
            metrics,
            config: Arc::new(config),
        })
    }
}

pub fn app(state: AppState) -> Router {
    let static_files = ServeDir::new(&state.config.http.static_dir);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/rooms", get(rooms))
        .route("/ws", get(websocket))
        .fallback_service(static_files)
        .with_state(state)
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
    // The transport's own cap sits well above the protocol limit so that an oversized message
    // still arrives and gets a `message-too-large` error instead of a dropped connection.
    let hard_cap = (state.config.limits.max_message_bytes * 4).max(1 << 20);
    ws.max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| run_session(socket, state))
}

/// A running server: its addresses, and its state (for tests that read metrics directly).
pub struct Running {
    pub http_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub state: AppState,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds HTTP and UDP and serves in the background until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let state = AppState::new(config)?;
    let listener = tokio::net::TcpListener::bind(state.config.listen_addr()).await?;
    let http_addr = listener.local_addr()?;
    let udp_addr = state.rtc.udp_addr();
    tracing::info!(http = %http_addr, udp = %udp_addr, "plaza listening");
    let router = app(state.clone());
    let done = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok(Running {
        http_addr,
        udp_addr,
        state,
        done,
    })
}
