//! Values every part of the processor, and its coordinator, agree on.

pub mod amount;

pub use amount::{Amount, AmountError};
