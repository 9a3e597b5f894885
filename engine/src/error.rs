//! The engine-wide error roll-up. Each module owns a `thiserror` enum; this one wraps them and
//! classifies each by [`ErrorKind`], which the API maps to GraphQL error codes.

use thiserror::Error;

/// A coarse classification of failures that clients can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    PermissionDenied,
    AlreadyExists,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// The code placed in a GraphQL error's `extensions.code`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

/// Implemented by every module error so the roll-up can classify it.
pub trait Classify {
    fn kind(&self) -> ErrorKind;
}

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(e) => e.kind(),
            Error::State(e) => e.kind(),
            Error::Server(e) => e.kind(),
        }
    }
}
