//! Mutual TLS between the coordinator, the processors and operators.
//!
//! The processor is the gRPC server: it presents its certificate and demands
//! a client certificate signed by the configured CA (the coordinator's or an
//! operator's). The coordinator presents its certificate to the processors
//! as a client, and on its own admin API as a server, demanding an
//! operator's client certificate there; it verifies the processors' against
//! its configured CA. What each certificate may call is decided by its name
//! ([`crate::auth`]). Plaintext only with `insecure = true`, which is meant
//! for local runs. Certificates and keys come from files, so Kubernetes
//! Secrets can be mounted; the key is read into zeroized memory.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use zeroize::Zeroizing;

/// The `[tls]` section, the same shape on both sides.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Plaintext gRPC, no certificates at all. Only for local runs (the
    /// devnet, tests): anyone who can reach the port is then trusted.
    pub insecure: bool,
    /// This side's certificate chain (PEM): the processor's server
    /// certificate; the coordinator's certificate, presented to processors
    /// as a client and to operators on its admin API as a server (so it
    /// needs both the clientAuth and serverAuth usages, and the DNS name
    /// operators dial).
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM).
    pub key_file: Option<PathBuf>,
    /// The CA (PEM) that must have signed the other side's certificate: on a
    /// processor, the CA of the coordinator's and the operators' client
    /// certificates; on the coordinator, the CA of the processors' server
    /// certificates and of the operators' client certificates.
    pub ca_file: Option<PathBuf>,
    /// A processor only: the name (subject common name or DNS name) on the
    /// coordinator's client certificate. Only a certificate with this name
    /// may open the link (`processor.v1.Processor/Connect`). Required with
    /// mutual TLS; the coordinator refuses the field.
    pub coordinator_name: Option<String>,
    /// Names (subject common name or DNS name) of operators' client
    /// certificates: only these may call the admin API
    /// (`processor.v1.ProcessorAdmin`, `coordinator.v1.CoordinatorAdmin`).
    /// Empty: nobody may. Only with mutual TLS.
    pub operator_names: Vec<String>,
}

/// Which binary reads a `[tls]` section: the processor names the
/// coordinator it accepts, the coordinator does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    /// The processor (server of the link and of its admin API).
    Processor,
    /// The coordinator (client of the links, server of its admin API).
    Coordinator,
}

/// A TLS file that cannot be used; names the config field.
#[derive(Debug, thiserror::Error)]
#[error("{field} ({path}): {reason}")]
pub struct TlsError {
    field: String,
    path: String,
    reason: String,
}

impl TlsConfig {
    /// Either `insecure = true` and no files or names, or all three files
    /// (and, on a processor, the coordinator's name). `section` is the
    /// config path of this section, for messages.
    pub fn validate(&self, section: &str, side: TlsSide) -> Result<(), String> {
        self.validate_files(section)?;
        self.validate_names(section, side)
    }

    fn validate_names(&self, section: &str, side: TlsSide) -> Result<(), String> {
        if self.insecure {
            if self.coordinator_name.is_some() || !self.operator_names.is_empty() {
                return Err(format!(
                    "{section}.insecure = true and {section}.coordinator_name or \
                     {section}.operator_names is set: without certificates there are no names \
                     to check (choose plaintext for local runs, or mutual TLS)"
                ));
            }
            return Ok(());
        }
        let valid = |field: &str, name: &str| {
            if name.is_empty() || name.trim() != name {
                Err(format!(
                    "{section}.{field} {name:?} is not a certificate name (empty or padded with spaces)"
                ))
            } else {
                Ok(())
            }
        };
        match (side, &self.coordinator_name) {
            (TlsSide::Coordinator, Some(_)) => {
                return Err(format!(
                    "{section}.coordinator_name is a processor setting (the name on the \
                     coordinator's certificate it accepts); remove it here"
                ));
            }
            (TlsSide::Processor, None) => {
                return Err(format!(
                    "mutual TLS needs {section}.coordinator_name: the name (common name or DNS \
                     name) on the coordinator's client certificate, the only one that may open \
                     the link"
                ));
            }
            (TlsSide::Processor, Some(name)) => valid("coordinator_name", name)?,
            (TlsSide::Coordinator, None) => {}
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, name) in self.operator_names.iter().enumerate() {
            let field = format!("operator_names[{i}]");
            valid(&field, name)?;
            if !seen.insert(name) {
                return Err(format!("{section}.{field} {name:?} is listed twice"));
            }
            if self.coordinator_name.as_ref() == Some(name) {
                return Err(format!(
                    "{section}.{field} {name:?} is also {section}.coordinator_name: the \
                     coordinator and operators need separate identities"
                ));
            }
        }
        Ok(())
    }

    fn validate_files(&self, section: &str) -> Result<(), String> {
        let files = [
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("ca_file", &self.ca_file),
        ];
        if self.insecure {
            if let Some((name, _)) = files.iter().find(|(_, f)| f.is_some()) {
                return Err(format!(
                    "{section}.insecure = true and {section}.{name} is set: choose one \
                     (plaintext for local runs, or mutual TLS)"
                ));
            }
            return Ok(());
        }
        let missing: Vec<String> = files
            .iter()
            .filter(|(_, f)| f.as_ref().is_none_or(|p| p.as_os_str().is_empty()))
            .map(|(name, _)| format!("{section}.{name}"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "mutual TLS needs {} (or {section}.insecure = true for plaintext local runs)",
                missing.join(", ")
            ));
        }
        Ok(())
    }

    /// The server side (a processor): `None` when insecure.
    pub fn server(&self, section: &str) -> Result<Option<ServerTlsConfig>, TlsError> {
        let Some((identity, ca)) = self.load(section)? else {
            return Ok(None);
        };
        // client_auth_optional stays false: no certificate, no connection.
        Ok(Some(
            ServerTlsConfig::new().identity(identity).client_ca_root(ca),
        ))
    }

    /// The client side (the coordinator): `None` when insecure. The server
    /// name checked is the endpoint URL's host.
    pub fn client(&self, section: &str) -> Result<Option<ClientTlsConfig>, TlsError> {
        let Some((identity, ca)) = self.load(section)? else {
            return Ok(None);
        };
        Ok(Some(
            ClientTlsConfig::new().identity(identity).ca_certificate(ca),
        ))
    }

    fn load(&self, section: &str) -> Result<Option<(Identity, Certificate)>, TlsError> {
        if self.insecure {
            return Ok(None);
        }
        let cert = read_pem(
            section,
            "cert_file",
            self.cert_file.as_deref(),
            "CERTIFICATE",
        )?;
        let key = read_pem(section, "key_file", self.key_file.as_deref(), "PRIVATE KEY")?;
        let ca = read_pem(section, "ca_file", self.ca_file.as_deref(), "CERTIFICATE")?;
        Ok(Some((
            Identity::from_pem(cert.as_slice(), key.as_slice()),
            Certificate::from_pem(ca.as_slice()),
        )))
    }
}

/// Reads a PEM file and checks it holds a block of the expected kind, so a
/// swapped or empty file is named at start-up rather than at the first
/// handshake.
fn read_pem(
    section: &str,
    field: &str,
    path: Option<&Path>,
    kind: &str,
) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let error = |path: &str, reason: String| TlsError {
        field: format!("{section}.{field}"),
        path: path.to_owned(),
        reason,
    };
    let path = path.ok_or_else(|| error("-", "not set".into()))?;
    let shown = path.display().to_string();
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| error(&shown, format!("cannot read: {e}")))?,
    );
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| error(&shown, "not a PEM file (not text)".into()))?;
    // "PRIVATE KEY" also matches "EC PRIVATE KEY" and "RSA PRIVATE KEY".
    if !text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(kind))
    {
        return Err(error(&shown, format!("holds no PEM `{kind}` block")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_or_all_three_files() {
        let none = TlsConfig::default();
        let msg = none
            .validate("tls", TlsSide::Coordinator)
            .expect_err("nothing set");
        assert!(
            msg.contains("tls.cert_file") && msg.contains("tls.insecure"),
            "{msg}"
        );
        let partial = TlsConfig {
            cert_file: Some("c".into()),
            key_file: Some("k".into()),
            ..TlsConfig::default()
        };
        let msg = partial
            .validate("tls", TlsSide::Coordinator)
            .expect_err("no CA");
        assert!(
            msg.contains("tls.ca_file") && !msg.contains("key_file"),
            "{msg}"
        );
        let both = TlsConfig {
            insecure: true,
            ca_file: Some("c".into()),
            ..TlsConfig::default()
        };
        let msg = both
            .validate("tls", TlsSide::Coordinator)
            .expect_err("contradiction");
        assert!(msg.contains("tls.ca_file"), "{msg}");
        assert!(
            TlsConfig {
                insecure: true,
                ..TlsConfig::default()
            }
            .validate("tls", TlsSide::Coordinator)
            .is_ok()
        );
    }

    #[test]
    fn names_are_checked_per_side() {
        let files = TlsConfig {
            cert_file: Some("c".into()),
            key_file: Some("k".into()),
            ca_file: Some("a".into()),
            ..TlsConfig::default()
        };
        let msg = files
            .validate("tls", TlsSide::Processor)
            .expect_err("a processor must name its coordinator");
        assert!(msg.contains("tls.coordinator_name"), "{msg}");
        let processor = TlsConfig {
            coordinator_name: Some("coordinator".into()),
            operator_names: vec!["alice".into()],
            ..files.clone()
        };
        assert!(processor.validate("tls", TlsSide::Processor).is_ok());
        let msg = processor
            .validate("tls", TlsSide::Coordinator)
            .expect_err("the coordinator names no coordinator");
        assert!(msg.contains("tls.coordinator_name"), "{msg}");
        let shared = TlsConfig {
            operator_names: vec!["alice".into(), "coordinator".into()],
            ..processor.clone()
        };
        let msg = shared
            .validate("tls", TlsSide::Processor)
            .expect_err("one name for two identities");
        assert!(msg.contains("tls.operator_names[1]"), "{msg}");
        let twice = TlsConfig {
            operator_names: vec!["alice".into(), "alice".into()],
            ..processor.clone()
        };
        assert!(twice.validate("tls", TlsSide::Processor).is_err());
        let blank = TlsConfig {
            operator_names: vec![" alice".into()],
            ..processor
        };
        assert!(blank.validate("tls", TlsSide::Processor).is_err());
        let plaintext = TlsConfig {
            insecure: true,
            operator_names: vec!["alice".into()],
            ..TlsConfig::default()
        };
        let msg = plaintext
            .validate("tls", TlsSide::Processor)
            .expect_err("names without certificates");
        assert!(msg.contains("tls.operator_names"), "{msg}");
    }

    #[test]
    fn a_missing_or_wrong_file_is_named() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cert = dir.path().join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .expect("writable temp dir");
        let config = TlsConfig {
            insecure: false,
            cert_file: Some(cert.clone()),
            // The certificate where the key should be.
            key_file: Some(cert),
            ca_file: Some(dir.path().join("absent.pem")),
            ..TlsConfig::default()
        };
        let err = config.server("tls").expect_err("key file holds no key");
        assert!(err.to_string().contains("tls.key_file"), "{err}");
    }
}
