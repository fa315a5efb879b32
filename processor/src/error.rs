//! The processor's error type for its gRPC services, mapped to `tonic::Code`
//! in one place.

use tonic::{Code, Status};

/// What can go wrong answering a gRPC call.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The key, session, block or entry asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is valid but cannot be served in the current state.
    #[error("not possible yet: {0}")]
    FailedPrecondition(String),
    /// Postgres (or a daemon) is unavailable; retry later.
    #[error("storage unavailable: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let code = match &error {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::Storage(_) => Code::Unavailable,
        };
        let message = match &error {
            ServiceError::Storage(e) => {
                format!("the processor's database is unavailable ({e}); check Postgres and retry")
            }
            other => other.to_string(),
        };
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let s: Status = ServiceError::InvalidArgument("x".into()).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let s: Status = ServiceError::NotFound("x".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = ServiceError::FailedPrecondition("x".into()).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s: Status = ServiceError::Storage(sqlx::Error::PoolTimedOut).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("retry"));
    }
}
