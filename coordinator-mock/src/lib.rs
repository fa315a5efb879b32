//! A coordinator for local runs, tests and demos. It speaks the same v1
//! contract a production coordinator would: it dials processors, keeps one
//! exactly-once link to each (state in its own Postgres), and drives the
//! procedures.
//!
//! Modules depend downwards only:
//! - `run`, `admin`, `metrics`, `devnet`: the process and its APIs, over
//! - `coordinator`: links, dialers and timers, over
//! - `dispatch`: each processor message to its role module, passing on what
//!   one reports (a batch included, a plan completed) to `signing`;
//! - the role modules `settlement`, `signing`, `batches`, `payouts`,
//!   `keygen` (in that order: each may use those after it, never before);
//!   each owns its tables, and all of its SQL is in its `db` submodule;
//! - `error`, `common`, `config`, `backoff` at the bottom.

pub mod admin;
pub mod backoff;
pub mod batches;
pub mod chaos;
pub mod common;
pub mod config;
pub mod coordinator;
pub mod devnet;
pub mod dispatch;
pub mod error;
pub mod invariants;
pub mod keygen;
pub mod metrics;
pub mod payouts;
pub mod run;
pub mod settlement;
pub mod signing;
