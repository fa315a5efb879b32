//! Authorization by client-certificate name, on both servers.
//!
//! Mutual TLS ([`crate::tls`]) proves a client holds a certificate of the
//! configured CA; this module decides what that client may call. A
//! certificate's names are its subject common names and its DNS subject
//! alternative names. Two identities:
//!
//! * the **coordinator**: the certificate names `tls.coordinator_name` (a
//!   processor setting). It may open the link (`processor.v1.Processor`) and
//!   nothing else;
//! * an **operator**: the certificate names one of `tls.operator_names`. It
//!   may call the admin API (`processor.v1.ProcessorAdmin`,
//!   `coordinator.v1.CoordinatorAdmin`) and nothing else.
//!
//! A certificate naming both is refused everywhere: one key must not hold
//! both powers. Health and reflection take any certificate of the CA. The
//! check runs in an interceptor, before the service sees the call: a refused
//! `Connect` never reaches the link, so it cannot supersede the live session.
//! With `tls.insecure` there are no certificates and every call is served
//! (local runs only).

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Status};
use tracing::warn;
use x509_parser::extensions::GeneralName;

/// What a caller must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The coordinator: the link only.
    Coordinator,
    /// An operator: the admin API only.
    Operator,
}

/// The configured identities; `None` in plaintext mode.
#[derive(Debug, Clone)]
pub struct Access {
    names: Option<Arc<Names>>,
}

#[derive(Debug)]
struct Names {
    coordinator: Option<String>,
    operators: BTreeSet<String>,
}

impl Access {
    /// No authorization: plaintext local runs (`tls.insecure = true`).
    pub fn insecure() -> Self {
        Self { names: None }
    }

    /// Authorization by the names in a `[tls]` section (none if insecure).
    pub fn from_config(tls: &crate::tls::TlsConfig) -> Self {
        if tls.insecure {
            return Self::insecure();
        }
        Self {
            names: Some(Arc::new(Names {
                coordinator: tls.coordinator_name.clone(),
                operators: tls.operator_names.iter().cloned().collect(),
            })),
        }
    }

    /// Whether calls are checked at all (false in plaintext mode).
    pub fn enforced(&self) -> bool {
        self.names.is_some()
    }

    /// Checks that the client whose certificate chain is `certs` (leaf
    /// first) may call `service` as `role`. The refusal is
    /// `PermissionDenied` naming the expected and the presented identity.
    pub fn authorize<C: AsRef<[u8]>>(
        &self,
        certs: Option<&[C]>,
        role: Role,
        service: &str,
    ) -> Result<(), Status> {
        let Some(names) = &self.names else {
            return Ok(());
        };
        let refuse = |why: String| {
            let message = format!("{service} refused: {why}");
            warn!("{message}");
            Err(Status::permission_denied(message))
        };
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return refuse("the client presented no certificate".into());
        };
        let presented = match names_of(leaf.as_ref()) {
            Ok(p) => p,
            Err(e) => return refuse(format!("the client certificate cannot be read: {e}")),
        };
        let shown = show(&presented);
        let coordinator = names
            .coordinator
            .as_ref()
            .filter(|c| presented.contains(*c));
        let operator = presented.iter().find(|n| names.operators.contains(*n));
        if let (Some(c), Some(o)) = (coordinator, operator) {
            return refuse(format!(
                "the client certificate names both the coordinator ({c:?}) and an operator \
                 ({o:?}); issue each its own certificate"
            ));
        }
        match role {
            Role::Coordinator => {
                if coordinator.is_some() {
                    return Ok(());
                }
                let expected = names.coordinator.as_deref().unwrap_or_default();
                refuse(format!(
                    "only the coordinator may open the link: expected a client certificate \
                     naming {expected:?} (tls.coordinator_name), got one naming {shown}"
                ))
            }
            Role::Operator => {
                if operator.is_some() {
                    return Ok(());
                }
                if names.operators.is_empty() {
                    return refuse(format!(
                        "only operators may call the admin API, and tls.operator_names is \
                         empty; got a client certificate naming {shown}"
                    ));
                }
                refuse(format!(
                    "only operators may call the admin API: expected a client certificate \
                     naming one of {} (tls.operator_names), got one naming {shown}",
                    show(&names.operators.iter().cloned().collect::<Vec<_>>())
                ))
            }
        }
    }

    /// An interceptor admitting only `role` to `service` (its gRPC name,
    /// for messages).
    pub fn require(&self, role: Role, service: &'static str) -> RequireRole {
        RequireRole {
            access: self.clone(),
            role,
            service,
        }
    }
}

/// A tonic interceptor made by [`Access::require`].
#[derive(Debug, Clone)]
pub struct RequireRole {
    access: Access,
    role: Role,
    service: &'static str,
}

impl tonic::service::Interceptor for RequireRole {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let certs = request.peer_certs();
        self.access
            .authorize(certs.as_deref().map(Vec::as_slice), self.role, self.service)?;
        Ok(request)
    }
}

/// A certificate's names: subject common names, then DNS alternative names.
pub fn names_of(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .collect();
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    for name in san.iter().flat_map(|s| &s.value.general_names) {
        if let GeneralName::DNSName(dns) = name {
            names.push((*dns).to_owned());
        }
    }
    Ok(names)
}

fn show(names: &[String]) -> String {
    if names.is_empty() {
        return "no name at all".into();
    }
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsConfig;

    fn cert(cn: &str, dns: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key generation works");
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
                .expect("valid DNS names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .self_signed(&key)
            .expect("self-signing works")
            .der()
            .to_vec()
    }

    fn access() -> Access {
        Access::from_config(&TlsConfig {
            coordinator_name: Some("coordinator".into()),
            operator_names: vec!["alice".into(), "bob".into()],
            ..TlsConfig::default()
        })
    }

    #[test]
    fn names_are_common_name_and_dns_names() {
        assert_eq!(
            names_of(&cert("alice", &["localhost", "alice.example"])).expect("parses"),
            ["alice", "localhost", "alice.example"]
        );
    }

    #[test]
    fn each_identity_gets_its_own_service_only() {
        let access = access();
        let coordinator = [cert("coordinator", &["localhost"])];
        let operator = [cert("ops", &["bob"])];
        let stranger = [cert("mallory", &["localhost"])];
        assert!(
            access
                .authorize(Some(&coordinator), Role::Coordinator, "link")
                .is_ok()
        );
        assert!(
            access
                .authorize(Some(&operator), Role::Operator, "admin")
                .is_ok()
        );
        let refused = access
            .authorize(Some(&operator), Role::Coordinator, "link")
            .expect_err("an operator cannot open the link");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("\"coordinator\"")
                && refused.message().contains("\"ops\", \"bob\""),
            "{}",
            refused.message()
        );
        let refused = access
            .authorize(Some(&coordinator), Role::Operator, "admin")
            .expect_err("the coordinator cannot use the admin API");
        assert!(
            refused.message().contains("\"alice\", \"bob\""),
            "{}",
            refused.message()
        );
        for role in [Role::Coordinator, Role::Operator] {
            assert!(access.authorize(Some(&stranger), role, "x").is_err());
            assert!(access.authorize::<Vec<u8>>(None, role, "x").is_err());
        }
        let both = [cert("coordinator", &["alice"])];
        for role in [Role::Coordinator, Role::Operator] {
            let refused = access
                .authorize(Some(&both), role, "x")
                .expect_err("one certificate cannot hold both identities");
            assert!(refused.message().contains("both"), "{}", refused.message());
        }
    }

    #[test]
    fn plaintext_checks_nothing() {
        let access = Access::from_config(&TlsConfig {
            insecure: true,
            ..TlsConfig::default()
        });
        assert!(!access.enforced());
        assert!(
            access
                .authorize::<Vec<u8>>(None, Role::Coordinator, "link")
                .is_ok()
        );
    }
}
