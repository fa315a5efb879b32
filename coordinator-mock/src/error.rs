//! Why the coordinator could not do what an operator asked, and the gRPC
//! status each reason becomes. At the bottom of the module graph: the
//! coordinator, its admin API and the procedures it starts all report with
//! it.

use link;

/// Why the coordinator could not do something.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// No processor by that name is configured.
    #[error("no processor named {0:?} is configured")]
    UnknownProcessor(String),
    /// A request value is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request cannot be served yet.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No such key generation session.
    #[error("no key generation session {0}")]
    UnknownSession(u64),
    /// Postgres trouble.
    #[error("database: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<link::EnqueueError> for CoordinatorError {
    fn from(e: link::EnqueueError) -> Self {
        match e {
            link::EnqueueError::TooLarge(t) => Self::InvalidArgument(t.to_string()),
            link::EnqueueError::Storage(e) => Self::Storage(e),
        }
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(e: CoordinatorError) -> Self {
        match &e {
            CoordinatorError::UnknownProcessor(_) => tonic::Status::not_found(e.to_string()),
            CoordinatorError::InvalidArgument(_) => tonic::Status::invalid_argument(e.to_string()),
            CoordinatorError::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(e.to_string())
            }
            CoordinatorError::UnknownSession(_) => tonic::Status::not_found(e.to_string()),
            CoordinatorError::Storage(inner) if let Some(t) = link::too_large(inner) => {
                tonic::Status::invalid_argument(t.to_string())
            }
            CoordinatorError::Storage(_) => tonic::Status::unavailable(format!(
                "the coordinator's database is unavailable ({e}); check Postgres and retry"
            )),
        }
    }
}
