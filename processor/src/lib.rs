//! A validator's Monero threshold-custody processor.
//!
//! The processor talks to its coordinator over one exactly-once link
//! ([`link`]), keeps all state in its own Postgres, and answers operators'
//! queries ([`admin`]).

pub mod accounts;
pub mod admin;
pub mod amount;
pub mod auth;
pub mod batch;
pub mod config;
pub mod db;
pub mod error;
pub mod failpoint;
pub mod fuzzing;
pub mod inbound;
pub mod keygen;
pub mod keystore;
pub mod link;
pub mod metrics;
pub mod monero;
pub mod run;
pub mod scanner;
pub mod scheduler;
pub mod server;
pub mod settlement;
pub mod signer;
pub mod telemetry;
pub mod tls;
