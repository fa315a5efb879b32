//! The coordinator-mock's configuration: a TOML file, then environment
//! overrides (`COORDINATOR_<FIELD>`, `COORDINATOR_<SECTION>__<FIELD>`, and
//! `DATABASE_URL` for `database_url`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use link::LinkConfig;
use serde::Deserialize;
use service::config::{AdminConfig, ConfigError, LogConfig, describe, redact_url};

/// Everything the coordinator-mock needs to start.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This coordinator's name, sent to processors in `Hello`.
    #[serde(default = "default_node_id")]
    pub node_id: String,
    /// Address of the admin gRPC server (admin API, health, reflection):
    /// mutual TLS with operators' client certificates unless
    /// `tls.insecure`.
    pub listen: SocketAddr,
    /// Plaintext `grpc.health.v1` only, for probes that cannot present a
    /// client certificate (Kubernetes' gRPC probes); absent: not served.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// Prometheus text metrics at `GET /metrics` over plain HTTP; absent:
    /// not served.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Mutual TLS towards the processors and on the admin API: this
    /// coordinator's certificate (client to processors, server to
    /// operators), the CA the processors' and operators' certificates must
    /// chain to, and the operators' names (`operator_names`). Required
    /// unless `insecure = true` (then endpoints are `http://` and the admin
    /// API is plaintext).
    #[serde(default)]
    pub tls: service::tls::TlsConfig,
    /// Postgres URL of the coordinator's own database (not a processor's).
    pub database_url: String,
    /// Most connections in the Postgres pool.
    #[serde(default = "default_max_connections")]
    pub max_db_connections: u32,
    /// The processors to dial, in participant order.
    pub processors: Vec<ProcessorEndpoint>,
    /// Link tuning, the same for every processor.
    #[serde(default)]
    pub link: LinkConfig,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// Settlement-chain simulation.
    #[serde(default)]
    pub settlement: SettlementConfig,
    /// Key generation.
    #[serde(default)]
    pub keygen: KeygenConfig,
    /// Signing (batches).
    #[serde(default)]
    pub signing: SigningConfig,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("health_listen", &self.health_listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("tls", &self.tls)
            .field("database_url", &redact_url(&self.database_url))
            .field("max_db_connections", &self.max_db_connections)
            .field("processors", &self.processors)
            .field("link", &self.link)
            .field("reconnect", &self.reconnect)
            .field("settlement", &self.settlement)
            .field("keygen", &self.keygen)
            .field("signing", &self.signing)
            .field("admin", &self.admin)
            .field("log", &self.log)
            .finish()
    }
}

/// A processor the coordinator serves.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessorEndpoint {
    /// Its name (the link id in this coordinator's database). Unique.
    pub name: String,
    /// Its gRPC endpoint, e.g. "http://127.0.0.1:50051".
    pub endpoint: String,
}

/// How the coordinator retries a processor it cannot reach: exponential from
/// `initial`, doubling, never above `max` (a cap), with up to 20% jitter.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// First delay after a failure.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Longest delay between attempts.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Timeout of one TCP/HTTP2 connection attempt.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// The simulated settlement chain.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SettlementConfig {
    /// Produce a settlement block this often (absent: only on request through
    /// the admin API, and when a registration or a key's activation waits).
    #[serde(with = "humantime_serde")]
    pub block_interval: Option<Duration>,
    /// monerod's RPC URL: each settlement block carries a Monero horizon
    /// (this daemon's tip less `keygen.confirmations`), and processors scan
    /// no further than it. Absent: the horizon stays at 0 and processors
    /// scan nothing (for tests that need no Monero).
    pub monero_daemon_url: Option<String>,
    /// Most burns one settlement block carries; more wait for the next
    /// block, oldest first. Bounded so a block always fits the link's
    /// `max_payload_bytes` (checked at start).
    pub max_burns_per_block: usize,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        Self {
            block_interval: None,
            monero_daemon_url: None,
            max_burns_per_block: 256,
        }
    }
}

/// The most bytes one burn takes in a settlement block: a burn id of at most
/// `payouts::MAX_BURN_ID_BYTES`, an address of at most 106 characters, an
/// amount, and their protobuf tags and lengths.
pub const MAX_BURN_BYTES: usize = crate::payouts::MAX_BURN_ID_BYTES + 106 + 32;

/// Room in a settlement block for everything but its burns (number,
/// horizon, included batch ids, account registrations).
const SETTLEMENT_BLOCK_ROOM: usize = 16 * 1024;

/// Parameters every key this coordinator generates fixes for its
/// processors (sent in `KeyGenStart`): what they report is derived from
/// these, never from a processor's own config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainParams {
    /// A Monero block is final once this many blocks are on top of it.
    pub confirmations: u64,
    /// A coordination window opens every this many finalized blocks.
    pub window_blocks: u64,
}

/// How key generations run.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KeygenConfig {
    /// A round not finished by every participant within this time fails,
    /// naming the silent ones.
    #[serde(with = "humantime_serde")]
    pub round_timeout: Duration,
    /// If set, start session 0 with this threshold among every configured
    /// processor as soon as all have announced their identity keys.
    pub auto_start_threshold: Option<u32>,
    /// The participants of that automatic first key generation, by name
    /// (empty: every configured processor). Those left out can join a later
    /// key (a rotation).
    pub auto_start_processors: Vec<String>,
    /// Fixed with each new key: a Monero block is final once this many
    /// blocks are on top of it.
    pub confirmations: u64,
    /// Fixed with each new key: a coordination window opens every this
    /// many finalized blocks.
    pub window_blocks: u64,
}

impl KeygenConfig {
    /// The parameters a new key fixes.
    pub fn chain(&self) -> ChainParams {
        ChainParams {
            confirmations: self.confirmations,
            window_blocks: self.window_blocks,
        }
    }
}

impl Default for KeygenConfig {
    fn default() -> Self {
        Self {
            round_timeout: Duration::from_secs(60),
            auto_start_threshold: None,
            auto_start_processors: Vec::new(),
            confirmations: 10,
            window_blocks: 5,
        }
    }
}

/// How signing attempts run.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// An attempt not finished within this time is abandoned and re-attempted
    /// with fresh nonces; signers that stayed silent are not chosen again
    /// unless they answer first.
    #[serde(with = "humantime_serde")]
    pub round_timeout: Duration,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            round_timeout: Duration::from_secs(10),
        }
    }
}

fn default_node_id() -> String {
    "coordinator".into()
}

fn default_max_connections() -> u32 {
    10
}

impl Config {
    /// Reads `path`, applies environment overrides, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Parse(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        let config: Self = Figment::from(Toml::file_exact(path))
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database_url".into()),
            )
            .merge(
                // `<PREFIX>CONFIG` names the file itself (the CLI reads it).
                Env::prefixed("COORDINATOR_")
                    .ignore(&["config"])
                    .split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Parse(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (no environment), validates.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id.trim().is_empty() {
            return invalid("node_id must not be empty".into());
        }
        if !self.database_url.starts_with("postgres://")
            && !self.database_url.starts_with("postgresql://")
        {
            return invalid(format!(
                "database_url must be a postgres:// URL, got {:?}",
                redact_url(&self.database_url)
            ));
        }
        if self.max_db_connections < 2 {
            return invalid("max_db_connections must be at least 2".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.processors.iter().enumerate() {
            if p.name.trim().is_empty() {
                return invalid(format!("processors[{i}].name must not be empty"));
            }
            if !names.insert(p.name.as_str()) {
                return invalid(format!("processors[{i}].name {:?} is used twice", p.name));
            }
            if !(p.endpoint.starts_with("http://") || p.endpoint.starts_with("https://")) {
                return invalid(format!(
                    "processors[{i}].endpoint must start with http:// or https://, got {:?}",
                    p.endpoint
                ));
            }
            let tls = p.endpoint.starts_with("https://");
            if tls == self.tls.insecure {
                return invalid(format!(
                    "processors[{i}].endpoint {:?} must start with {} when tls.insecure = {}",
                    p.endpoint,
                    if self.tls.insecure {
                        "http://"
                    } else {
                        "https://"
                    },
                    self.tls.insecure
                ));
            }
            if p.endpoint.parse::<tonic::transport::Uri>().is_err() {
                return invalid(format!(
                    "processors[{i}].endpoint {:?} is not a URI",
                    p.endpoint
                ));
            }
        }
        self.tls
            .validate("tls", service::tls::TlsSide::Coordinator)
            .map_err(ConfigError::Invalid)?;
        self.link.validate("link").map_err(ConfigError::Invalid)?;
        let burns = self.settlement.max_burns_per_block;
        let fits = burns
            .checked_mul(MAX_BURN_BYTES)
            .and_then(|b| b.checked_add(SETTLEMENT_BLOCK_ROOM))
            .is_some_and(|b| b <= self.link.max_payload_bytes);
        if burns == 0 || !fits {
            return invalid(format!(
                "settlement.max_burns_per_block ({burns}) must be at least 1 and small enough that a \
                 block fits link.max_payload_bytes ({}): at most {}",
                self.link.max_payload_bytes,
                self.link
                    .max_payload_bytes
                    .saturating_sub(SETTLEMENT_BLOCK_ROOM)
                    / MAX_BURN_BYTES
            ));
        }
        if self.reconnect.initial.is_zero() {
            return invalid("reconnect.initial must be more than 0".into());
        }
        if self.reconnect.max < self.reconnect.initial {
            return invalid(format!(
                "reconnect.max ({:?}) must be at least reconnect.initial ({:?})",
                self.reconnect.max, self.reconnect.initial
            ));
        }
        if self.reconnect.connect_timeout.is_zero() {
            return invalid("reconnect.connect_timeout must be more than 0".into());
        }
        if self.keygen.confirmations == 0 {
            return invalid("keygen.confirmations must be at least 1".into());
        }
        if self.keygen.window_blocks == 0 {
            return invalid("keygen.window_blocks must be at least 1".into());
        }
        if let Some(url) = &self.settlement.monero_daemon_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid(format!(
                "settlement.monero_daemon_url must start with http:// or https://, got {url:?}"
            ));
        }
        if self.settlement.block_interval.is_some_and(|d| d.is_zero()) {
            return invalid("settlement.block_interval must be more than 0".into());
        }
        if self.signing.round_timeout.is_zero() {
            return invalid("signing.round_timeout must be more than 0".into());
        }
        if self.keygen.round_timeout.is_zero() {
            return invalid("keygen.round_timeout must be more than 0".into());
        }
        for name in &self.keygen.auto_start_processors {
            if !self.processors.iter().any(|p| &p.name == name) {
                return invalid(format!(
                    "keygen.auto_start_processors names {name:?}, which is not a configured processor"
                ));
            }
        }
        if let Some(t) = self.keygen.auto_start_threshold {
            let n = match self.keygen.auto_start_processors.len() {
                0 => self.processors.len(),
                named => named,
            };
            if t < 2 || t as usize > n {
                return invalid(format!(
                    "keygen.auto_start_threshold {t} is not within 2..={n} (the processors it starts \
                     among)"
                ));
            }
        }
        if self.admin.request_timeout.is_zero() {
            return invalid("admin.request_timeout must be more than 0".into());
        }
        if self.admin.concurrency_limit == 0 {
            return invalid("admin.concurrency_limit must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_parses() {
        let config = Config::from_toml(include_str!("../coordinator.example.toml"))
            .expect("the shipped example config must parse");
        assert_eq!(config.processors.len(), 1);
        assert_eq!(
            config.settlement.block_interval,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            config.settlement.max_burns_per_block,
            SettlementConfig::default().max_burns_per_block
        );
        assert_eq!(config.link, link::LinkConfig::default());
    }

    #[test]
    fn burns_per_block_must_fit_the_payload_limit() {
        let base = "listen = \"127.0.0.1:1\"\ndatabase_url = \"postgres://p@db/c\"\nprocessors = []\n[tls]\ninsecure = true\n";
        for bad in [
            "[settlement]\nmax_burns_per_block = 0\n",
            "[link]\nmax_payload_bytes = 65536\n[settlement]\nmax_burns_per_block = 1000\n",
        ] {
            let err = Config::from_toml(&format!("{base}{bad}")).expect_err(bad);
            assert!(
                err.to_string().contains("settlement.max_burns_per_block"),
                "{err}"
            );
        }
        Config::from_toml(&format!(
            "{base}[link]\nmax_payload_bytes = 65536\n[settlement]\nmax_burns_per_block = 100\n"
        ))
        .expect("100 burns fit 64 KiB");
    }

    #[test]
    fn shipped_kubernetes_configs_parse() {
        // database_url comes from the pod's environment there.
        for (file, text) in [
            (
                "base",
                include_str!("../../deploy/base/coordinator/config.toml"),
            ),
            (
                "devnet",
                include_str!("../../deploy/overlays/devnet/coordinator.toml"),
            ),
        ] {
            let text = format!("database_url = \"postgres://c@db/coordinator\"\n{text}");
            let config = Config::from_toml(&text)
                .unwrap_or_else(|e| panic!("the {file} coordinator config must parse: {e}"));
            assert!(!config.tls.insecure, "{file}");
            // Probes cannot present an operator's certificate.
            assert!(config.health_listen.is_some(), "{file}");
            assert_eq!(config.tls.operator_names, ["operator"], "{file}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let base = "listen = \"127.0.0.1:1\"\ndatabase_url = \"postgres://x/y\"\ntls = { insecure = true }\n";
        let msg = Config::from_toml(&format!(
            "{base}[[processors]]\nname = \"a\"\nendpoint = \"127.0.0.1:5\"\n"
        ))
        .expect_err("endpoint without scheme")
        .to_string();
        assert!(msg.contains("processors[0].endpoint"), "{msg}");
        let msg = Config::from_toml(&format!(
            "{base}processors = []\n[reconnect]\ninitial = \"2s\"\nmax = \"1s\"\n"
        ))
        .expect_err("cap below the first delay")
        .to_string();
        assert!(msg.contains("reconnect.max"), "{msg}");
        let msg = Config::from_toml(&format!("{base}processors = []\ncolour = 1\n"))
            .expect_err("unknown field")
            .to_string();
        assert!(msg.contains("colour"), "{msg}");
        let msg = Config::from_toml(&format!(
            "{base}[[processors]]\nname = \"a\"\nendpoint = \"https://p:5\"\n"
        ))
        .expect_err("TLS endpoint with insecure = true")
        .to_string();
        assert!(msg.contains("processors[0].endpoint"), "{msg}");
        let msg = Config::from_toml(
            "listen = \"127.0.0.1:1\"\ndatabase_url = \"postgres://x/y\"\nprocessors = []\n",
        )
        .expect_err("neither TLS files nor insecure")
        .to_string();
        assert!(msg.contains("tls.cert_file"), "{msg}");
    }
}
