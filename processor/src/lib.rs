//! A validator's Monero threshold-custody processor.
//!
//! The processor talks to its coordinator over one exactly-once link
//! ([`link`]), keeps all state in its own Postgres, and answers operators'
//! queries ([`admin`]).

pub mod accounts;
pub mod admin;
pub mod backup;
pub mod batch;
pub mod config;
pub mod db;
pub mod error;
pub mod fuzzing;
pub mod inbound;
pub mod keygen;
pub mod lifecycle;
pub mod monero;
pub mod run;
pub mod scanner;
pub mod scheduler;
pub mod settlement;
pub mod signer;

// The role and infrastructure crates under the paths the processor has always
// had, for the binary's modules, the tests, benches and fuzz targets.
pub use keystore;
pub use link;
pub use primitives::amount;
pub use service::{auth, failpoint, metrics, server, telemetry, tls};
