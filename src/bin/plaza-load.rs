//! `plaza-load`: a bounded load test against a running Plaza, like LiveKit's `lk load-test`.
//! P publishers and S subscribers join one room, each its own WebRTC peer; the report gives
//! delivery, latency, join time and (with --server-pid) the server's CPU and memory.
//!
//!     plaza-load --url ws://127.0.0.1:8080/ws --publishers 4 --subscribers 8 --duration 30

use std::time::Duration;

use clap::Parser;
use plaza::load::{run, LoadConfig};

#[derive(Debug, Parser)]
#[command(version, about = "Load-test a running Plaza with real WebRTC peers")]
struct Args {
    /// Signalling URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Room to load (created by the first join).
    #[arg(long, default_value = "load-test")]
    room: String,
    /// Publishers, each sending one video track (and audio with --audio).
    #[arg(long, short = 'p', default_value_t = 2)]
    publishers: usize,
    /// Subscribers, each receiving every publisher.
    #[arg(long, short = 's', default_value_t = 5)]
    subscribers: usize,
    /// Seconds to measure once everyone receives everything; the run then ends by itself.
    #[arg(long, short = 'd', default_value_t = 30)]
    duration: u64,
    /// Video bitrate per publisher, in bits per second.
    #[arg(long, default_value_t = 800_000)]
    video_bitrate: u32,
    /// Video frames per second (a keyframe every 2 s).
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Also send Opus-sized audio, 50 packets per second.
    #[arg(long)]
    audio: bool,
    /// Send every publisher's periodic keyframe at the same moment (a worst case). By
    /// default each publisher is at its own point of the 2 s keyframe interval, as
    /// independent cameras are; keyframes the server asks for still come together.
    #[arg(long)]
    aligned_keyframes: bool,
    /// The server's pid, to measure its CPU and memory during the run.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Drop every Nth audio packet the first subscriber receives (to check the accounting).
    #[arg(long, default_value_t = 0)]
    drop_audio_every: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = LoadConfig {
        url: args.url,
        room: args.room,
        publishers: args.publishers,
        subscribers: args.subscribers,
        duration: Duration::from_secs(args.duration),
        video_bitrate: args.video_bitrate,
        video_fps: args.fps,
        audio: args.audio,
        aligned_keyframes: args.aligned_keyframes,
        server_pid: args.server_pid,
        drop_audio_every: args.drop_audio_every,
        live: true,
    };
    let report = run(config).await?;
    print!("{}", report.table());
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = args.json {
        std::fs::write(path, json)?;
    }
    Ok(())
}
