//! Test certificates (rcgen): a CA, and the server, coordinator and
//! operator certificates it issues, written to files for the `[tls]`
//! sections of the real binaries.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The coordinator's certificate name in these tests (`tls.coordinator_name`).
pub const COORDINATOR: &str = "coordinator";
/// The operator's certificate name in these tests (`tls.operator_names`).
pub const OPERATOR: &str = "operator";

/// A test certificate authority that issues server and client certificates.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Files of one issued certificate.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA the holder trusts for its peers.
    pub ca: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for common name `cn`, DNS `names`, `usages`.
    pub fn issue(
        &self,
        cn: &str,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages.to_vec();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a certificate for `cn` (DNS name localhost) and `peer_ca`'s
    /// certificate into `dir`.
    pub fn write(
        &self,
        dir: &Path,
        cn: &str,
        usages: &[ExtendedKeyUsagePurpose],
        peer_ca: &Ca,
    ) -> CertFiles {
        let (cert, key) = self.issue(cn, &["localhost"], usages);
        let files = CertFiles {
            cert: dir.join(format!("{cn}.crt")),
            key: dir.join(format!("{cn}.key")),
            ca: dir.join(format!("{cn}-peer-ca.crt")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(&files.ca, &peer_ca.cert_pem).unwrap();
        files
    }

    /// Writes a certificate for `cn` plus `peer_ca`'s certificate into
    /// `dir`; returns the `[tls]` section's file lines pointing at them.
    pub fn tls_section(
        &self,
        dir: &Path,
        cn: &str,
        usages: &[ExtendedKeyUsagePurpose],
        peer_ca: &Ca,
    ) -> String {
        let files = self.write(dir, cn, usages, peer_ca);
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        )
    }

    /// A processor's `[tls]` section: its server certificate, this CA for
    /// clients, the coordinator's and the operator's names.
    pub fn processor_tls(&self, dir: &Path, name: &str) -> String {
        format!(
            "{}coordinator_name = \"{COORDINATOR}\"\noperator_names = [\"{OPERATOR}\"]\n",
            self.tls_section(dir, name, &[ExtendedKeyUsagePurpose::ServerAuth], self)
        )
    }

    /// The coordinator's `[tls]` section: one certificate, a client to the
    /// processors and the server of its admin API, trusting `peer_ca`.
    pub fn coordinator_tls(&self, dir: &Path, peer_ca: &Ca) -> String {
        format!(
            "{}operator_names = [\"{OPERATOR}\"]\n",
            self.tls_section(
                dir,
                COORDINATOR,
                &[
                    ExtendedKeyUsagePurpose::ClientAuth,
                    ExtendedKeyUsagePurpose::ServerAuth
                ],
                peer_ca
            )
        )
    }

    /// A client identity named `cn` issued by this CA, trusting `server_ca`
    /// for the server's certificate (DNS name localhost).
    pub fn client_tls(&self, cn: &str, server_ca: &Ca) -> ClientTlsConfig {
        let (cert, key) = self.issue(cn, &[], &[ExtendedKeyUsagePurpose::ClientAuth]);
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&server_ca.cert_pem))
            .identity(Identity::from_pem(cert, key))
            .domain_name("localhost")
    }

    /// A client that presents no certificate, trusting this CA.
    pub fn anonymous_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cert_pem))
            .domain_name("localhost")
    }
}
