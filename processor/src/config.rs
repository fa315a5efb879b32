//! The processor's configuration: a TOML file, then environment overrides.
//!
//! Environment: `PROCESSOR_<FIELD>` for top-level fields and
//! `PROCESSOR_<SECTION>__<FIELD>` inside sections (for example
//! `PROCESSOR_LINK__PEER_TIMEOUT=3s`); `DATABASE_URL` sets `database_url`.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::link::LinkConfig;
pub use service::config::{AdminConfig, ConfigError, LogConfig, describe, redact_url};

/// Everything a processor needs to start.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This processor's name: sent to the coordinator in `Hello` and shown in
    /// logs. Unique among the validators of one coordinator.
    pub node_id: String,
    /// Address the gRPC server (link, admin, health, reflection) listens on.
    pub listen: SocketAddr,
    /// Plaintext `grpc.health.v1` only, for probes that cannot present a
    /// client certificate (Kubernetes' gRPC probes); absent: not served.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// Prometheus text metrics at `GET /metrics` over plain HTTP; absent:
    /// not served.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Mutual TLS on `listen`: required unless `insecure = true`.
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
    /// Postgres connection URL of this processor's own database. One
    /// processor per database: a second one refuses to start.
    pub database_url: String,
    /// Most connections in the Postgres pool.
    #[serde(default = "default_max_connections")]
    pub max_db_connections: u32,
    /// Key material at rest.
    pub keystore: KeystoreConfig,
    /// The Monero daemon to scan (absent: no scanning).
    #[serde(default)]
    pub monero: Option<crate::scanner::MoneroConfig>,
    /// Payout scheduling (used when `[monero]` is set).
    #[serde(default)]
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// The coordinator link.
    #[serde(default)]
    pub link: LinkConfig,
    /// The admin/query API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

// The database URL may carry a password: never print it.
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
            .field("keystore", &self.keystore)
            .field("monero", &self.monero)
            .field("scheduler", &self.scheduler)
            .field("link", &self.link)
            .field("admin", &self.admin)
            .field("log", &self.log)
            .finish()
    }
}

/// Where the key-encryption key comes from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeystoreConfig {
    /// A file holding the 32-byte key-encryption key as 64 hex characters
    /// (e.g. a mounted Secret; `processor generate-kek --out FILE` makes
    /// one). Every secret in the database is sealed under it; it is never
    /// stored in the database. Losing it loses the key shares.
    pub kek_file: std::path::PathBuf,
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
        Self::from_figment(Figment::from(Toml::file_exact(path)))
    }

    /// Parses a TOML string (no environment), validates.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn from_figment(base: Figment) -> Result<Self, ConfigError> {
        let config: Self = base
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database_url".into()),
            )
            .merge(
                // `<PREFIX>CONFIG` names the file itself (the CLI reads it).
                Env::prefixed("PROCESSOR_").ignore(&["config"]).split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Parse(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.trim().is_empty() {
            return Err(ConfigError::Invalid("node_id must not be empty".into()));
        }
        if !self.database_url.starts_with("postgres://")
            && !self.database_url.starts_with("postgresql://")
        {
            return Err(ConfigError::Invalid(format!(
                "database_url must be a postgres:// URL, got {:?}",
                redact_url(&self.database_url)
            )));
        }
        if self.max_db_connections < 2 {
            return Err(ConfigError::Invalid(
                "max_db_connections must be at least 2 (the link and the admin API each need one)"
                    .into(),
            ));
        }
        if self.keystore.kek_file.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "keystore.kek_file must not be empty".into(),
            ));
        }
        if let Some(monero) = &self.monero {
            monero.validate().map_err(ConfigError::Invalid)?;
        }
        self.scheduler.validate().map_err(ConfigError::Invalid)?;
        self.tls
            .validate("tls", crate::tls::TlsSide::Processor)
            .map_err(ConfigError::Invalid)?;
        self.link.validate("link").map_err(ConfigError::Invalid)?;
        if self.admin.request_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "admin.request_timeout must be more than 0".into(),
            ));
        }
        if self.admin.concurrency_limit == 0 {
            return Err(ConfigError::Invalid(
                "admin.concurrency_limit must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../processor.example.toml");
        let config = Config::from_toml(text).expect("the shipped example config must parse");
        assert_eq!(config.node_id, "validator-1");
        assert_eq!(config.link.peer_timeout, Duration::from_secs(5));
        assert_eq!(config.link, crate::link::LinkConfig::default());
        assert_eq!(config.monero.as_ref().map(|m| m.confirmations), Some(None));
        assert_eq!(
            config.scheduler,
            crate::scheduler::SchedulerConfig::default()
        );
    }

    #[test]
    fn shipped_kubernetes_config_parses() {
        // node_id and database_url come from the pod's environment there.
        let text = format!(
            "node_id = \"validator-1\"\ndatabase_url = \"postgres://p@db/processor\"\n{}",
            include_str!("../../deploy/base/processor/config.toml")
        );
        let config =
            Config::from_toml(&text).expect("deploy/base/processor/config.toml must parse");
        assert!(!config.tls.insecure);
        assert!(config.health_listen.is_some() && config.metrics_listen.is_some());
        // The CN deploy/README.md gives the coordinator-mock's certificate.
        assert_eq!(
            config.tls.coordinator_name.as_deref(),
            Some("coordinator-mock")
        );
        assert_eq!(config.tls.operator_names, ["operator"]);
    }

    #[test]
    fn a_zero_window_is_refused_by_name() {
        let text = "node_id = \"a\"\nlisten = \"127.0.0.1:1\"\ndatabase_url = \"postgres://x/y\"\n[keystore]\nkek_file = \"k\"\n[tls]\ninsecure = true\n[scheduler]\nwindow_blocks = 0\n";
        let err = Config::from_toml(text).expect_err("a zero window must be refused");
        assert!(err.to_string().contains("scheduler.window_blocks"), "{err}");
    }

    #[test]
    fn link_limits_are_validated_by_name() {
        let base = "node_id = \"a\"\nlisten = \"127.0.0.1:1\"\ndatabase_url = \"postgres://x/y\"\n[keystore]\nkek_file = \"k\"\n[tls]\ninsecure = true\n[link]\n";
        for (bad, field) in [
            ("max_payload_bytes = 10\n", "link.max_payload_bytes"),
            ("max_payload_bytes = 1073741824\n", "link.max_payload_bytes"),
            ("max_batch_bytes = 0\n", "link.max_batch_bytes"),
            ("max_handler_tries = 0\n", "link.max_handler_tries"),
        ] {
            let err = Config::from_toml(&format!("{base}{bad}")).expect_err(bad);
            assert!(err.to_string().contains(field), "{err}");
        }
        let ok = Config::from_toml(&format!("{base}max_payload_bytes = 65536\n")).expect("64 KiB");
        assert_eq!(
            ok.link.max_frame_bytes(),
            65536 + crate::link::FRAME_OVERHEAD
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let text = "node_id = \"a\"\nlisten = \"127.0.0.1:1\"\ndatabase_url = \"postgres://x/y\"\n[keystore]\nkek_file = \"k\"\n[tls]\ninsecure = true\n[link]\nheartbeat = \"1s\"\n";
        let err = Config::from_toml(text).expect_err("unknown field must be refused");
        let msg = err.to_string();
        assert!(msg.contains("link") && msg.contains("heartbeat"), "{msg}");
    }

    #[test]
    fn bad_value_is_named() {
        let text =
            "node_id = \"a\"\nlisten = \"not an address\"\ndatabase_url = \"postgres://x/y\"\n";
        let msg = Config::from_toml(text)
            .expect_err("bad address")
            .to_string();
        assert!(msg.contains("`listen`"), "{msg}");
        let text = "node_id = \"a\"\nlisten = \"127.0.0.1:1\"\ndatabase_url = \"postgres://x/y\"\n[keystore]\nkek_file = \"k\"\n[tls]\ninsecure = true\n[link]\nheartbeat_interval = \"5s\"\npeer_timeout = \"2s\"\n";
        let msg = Config::from_toml(text)
            .expect_err("timeout below heartbeat")
            .to_string();
        assert!(msg.contains("link.peer_timeout"), "{msg}");
    }

    #[test]
    fn missing_field_is_named() {
        let msg = Config::from_toml("node_id = \"a\"\n")
            .expect_err("listen is required")
            .to_string();
        assert!(msg.contains("listen"), "{msg}");
    }

    #[test]
    fn password_is_redacted() {
        let config = Config::from_toml(
            "node_id = \"a\"\nlisten = \"127.0.0.1:1\"\ndatabase_url = \"postgres://u:hunter2@h/d\"\n[keystore]\nkek_file = \"k\"\n[tls]\ninsecure = true\n",
        )
        .expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("u:***@h/d"), "{shown}");
    }
}
