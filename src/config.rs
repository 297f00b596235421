//! The configuration: one typed tree with its defaults in code, read from a TOML file, then
//! `PLAZA_*` environment variables, then command-line flags (each layer overrides the last),
//! and checked by [`Config::validate`], whose errors name the offending key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub rtc: RtcConfig,
    pub ice_servers: Vec<IceServer>,
    pub limits: LimitsConfig,
    pub timeouts: TimeoutsConfig,
    pub media: MediaConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    pub static_dir: PathBuf,
    pub metrics_listen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtcConfig {
    pub udp_bind: String,
    pub udp_port: u16,
    pub udp_port_range: Vec<u16>,
    pub advertise_ips: Vec<String>,
    pub stun_discovery: String,
    pub ice_lite: bool,
    pub udp_recv_buffer_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_rooms: usize,
    pub max_participants_per_room: usize,
    pub max_tracks_per_participant: usize,
    pub max_message_bytes: usize,
    pub max_messages_per_second: u32,
    pub max_name_chars: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    pub peer_disconnected_ms: u64,
    pub ice_disconnected_ms: u64,
    pub ice_failed_ms: u64,
    pub session_idle_ms: u64,
    pub session_write_ms: u64,
    pub media_silence_ms: u64,
    pub shutdown_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    pub keyframe_request_interval_ms: u64,
    pub workers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            static_dir: "static".into(),
            metrics_listen: String::new(),
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            udp_bind: "0.0.0.0".into(),
            udp_port: 50000,
            udp_port_range: Vec::new(),
            advertise_ips: Vec::new(),
            stun_discovery: String::new(),
            ice_lite: false,
            udp_recv_buffer_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_rooms: 1000,
            max_participants_per_room: 100,
            max_tracks_per_participant: 8,
            max_message_bytes: 256 * 1024,
            max_messages_per_second: 50,
            max_name_chars: 64,
        }
    }
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            peer_disconnected_ms: 10_000,
            ice_disconnected_ms: 5_000,
            ice_failed_ms: 25_000,
            session_idle_ms: 30_000,
            session_write_ms: 10_000,
            media_silence_ms: 20_000,
            shutdown_ms: 10_000,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            keyframe_request_interval_ms: 500,
            workers: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Config {
    /// Reads `path` (if given) and applies `PLAZA_*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("PLAZA_") else {
                continue;
            };
            if rest == "CONFIG" {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut tree, &path, parse_env_value(&value))
                .map_err(|e| ConfigError::Parse(format!("{name}: {e}")))?;
        }
        let config: Config = toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        self.http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("http.listen", &e.to_string()))?;
        self.rtc
            .udp_bind
            .parse::<IpAddr>()
            .map_err(|e| invalid("rtc.udp_bind", &e.to_string()))?;
        if !self.http.metrics_listen.is_empty() {
            self.http
                .metrics_listen
                .parse::<SocketAddr>()
                .map_err(|e| invalid("http.metrics_listen", &e.to_string()))?;
        }
        match self.rtc.udp_port_range[..] {
            [] => {}
            [min, max] if min > 0 && min <= max => {}
            _ => {
                return Err(invalid(
                    "rtc.udp_port_range",
                    "must be empty or [first, last] with 0 < first <= last",
                ))
            }
        }
        if !self.rtc.stun_discovery.is_empty() && self.rtc.stun_discovery.rsplit_once(':').is_none()
        {
            return Err(invalid("rtc.stun_discovery", "must be host:port"));
        }
        for ip in &self.rtc.advertise_ips {
            ip.parse::<IpAddr>()
                .map_err(|e| invalid("rtc.advertise_ips", &format!("{ip:?}: {e}")))?;
        }
        for server in &self.ice_servers {
            if server.urls.is_empty() {
                return Err(invalid("ice_servers.urls", "must list at least one URL"));
            }
            for url in &server.urls {
                if !["stun:", "stuns:", "turn:", "turns:"]
                    .iter()
                    .any(|s| url.starts_with(s))
                {
                    return Err(invalid(
                        "ice_servers.urls",
                        &format!("{url:?} is not a stun:, stuns:, turn: or turns: URL"),
                    ));
                }
            }
        }
        let positive = [
            ("limits.max_rooms", self.limits.max_rooms as u64),
            (
                "limits.max_participants_per_room",
                self.limits.max_participants_per_room as u64,
            ),
            (
                "limits.max_tracks_per_participant",
                self.limits.max_tracks_per_participant as u64,
            ),
            (
                "limits.max_message_bytes",
                self.limits.max_message_bytes as u64,
            ),
            ("limits.max_name_chars", self.limits.max_name_chars as u64),
            (
                "timeouts.peer_disconnected_ms",
                self.timeouts.peer_disconnected_ms,
            ),
            (
                "timeouts.ice_disconnected_ms",
                self.timeouts.ice_disconnected_ms,
            ),
            ("timeouts.ice_failed_ms", self.timeouts.ice_failed_ms),
            ("timeouts.session_idle_ms", self.timeouts.session_idle_ms),
            ("timeouts.session_write_ms", self.timeouts.session_write_ms),
            ("timeouts.media_silence_ms", self.timeouts.media_silence_ms),
            ("timeouts.shutdown_ms", self.timeouts.shutdown_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.limits.max_message_bytes > 1024 * 1024 {
            return Err(invalid("limits.max_message_bytes", "must be at most 1 MiB"));
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(invalid("log.format", "must be \"text\" or \"json\""));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", &e.to_string()))?;
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.http.listen.parse().expect("validated: http.listen")
    }

    pub fn metrics_listen_addr(&self) -> Option<SocketAddr> {
        (!self.http.metrics_listen.is_empty()).then(|| {
            self.http
                .metrics_listen
                .parse()
                .expect("validated: http.metrics_listen")
        })
    }

    /// How long one signalling message may take to reach a client's socket.
    pub fn session_write_timeout(&self) -> Duration {
        Duration::from_millis(self.timeouts.session_write_ms)
    }

    /// How long a connected publisher's unmuted tracks may bring no RTP before its media path
    /// counts as dead.
    pub fn media_silence_limit(&self) -> Duration {
        Duration::from_millis(self.timeouts.media_silence_ms)
    }

    pub fn keyframe_request_interval(&self) -> Duration {
        Duration::from_millis(self.media.keyframe_request_interval_ms)
    }
}

/// An env value is read as a TOML value when it parses as one (numbers, booleans, arrays),
/// otherwise as a plain string, so `PLAZA_HTTP__LISTEN=0.0.0.0:9000` needs no quotes.
fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("`{first}` is not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_file_equals_the_defaults_in_code() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let from_file = Config::load(Some(&path), []).unwrap();
        assert_eq!(from_file, Config::default());
        from_file.validate().unwrap();
    }

    #[test]
    fn env_overrides_the_file_and_parses_types() {
        let env = [
            (
                "PLAZA_HTTP__LISTEN".to_string(),
                "127.0.0.1:9000".to_string(),
            ),
            ("PLAZA_RTC__UDP_PORT".to_string(), "40000".to_string()),
            (
                "PLAZA_RTC__ADVERTISE_IPS".to_string(),
                "[\"203.0.113.7\"]".to_string(),
            ),
            ("OTHER".to_string(), "ignored".to_string()),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:9000");
        assert_eq!(c.rtc.udp_port, 40000);
        assert_eq!(c.rtc.advertise_ips, vec!["203.0.113.7".to_string()]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::default();
        c.rtc.advertise_ips = vec!["not-an-ip".into()];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("rtc.advertise_ips"), "{err}");

        let mut c = Config::default();
        c.timeouts.session_write_ms = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("timeouts.session_write_ms"));

        let mut c = Config::default();
        c.limits.max_message_bytes = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("limits.max_message_bytes"));

        let err = Config::load(None, [("PLAZA_RTC__NOPE".into(), "1".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
