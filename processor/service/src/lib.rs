//! What both ends of the link run on besides the link itself: Postgres (pool,
//! migrations, instance lock), TLS and who may call what, the gRPC server's
//! layers, tracing, metrics, fault injection and shared configuration pieces.
//!
//! The processor and the coordinator-mock both depend on this crate; it
//! depends on neither, nor on any of the processor's role crates.

pub mod auth;
pub mod config;
pub mod db;
pub mod failpoint;
pub mod metrics;
pub mod server;
pub mod telemetry;
pub mod tls;
