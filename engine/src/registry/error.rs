//! Registry errors. Messages name hosts, repositories, references and digests, never
//! credentials or tokens: they end up in GraphQL errors and logs.

use crate::error::{Classify, ErrorKind};
use crate::oci::Digest;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegistryError {
    /// `what` is "manifest" or "blob"; `reference` names the image (and digest for blobs).
    #[error("{what} not found: {reference}")]
    NotFound {
        what: &'static str,
        reference: String,
    },
    /// Credentials (or a token obtained with them) were sent and refused.
    #[error("authentication failed for {host}/{repository}")]
    AuthFailed { host: String, repository: String },
    /// The registry wants credentials and we have none for this host.
    #[error("pull access denied for {host}/{repository}: the registry requires authentication and no credentials are configured for {host} (give them with Container.withRegistryAuth, or in the engine's docker config)")]
    CredentialsRequired { host: String, repository: String },
    /// A push refused for lack of (or without) credentials.
    #[error("push access denied for {host}/{repository}: the registry requires authentication with push rights; give credentials for {host} with Container.withRegistryAuth or in the engine's docker config")]
    PushDenied { host: String, repository: String },
    /// A 4xx to a push request, with the registry's own error message.
    #[error("{host}/{repository} rejected {what} (HTTP {status}): {message}")]
    Rejected {
        host: String,
        repository: String,
        what: String,
        status: u16,
        message: String,
    },
    /// 403 without credentials having been sent.
    #[error("access denied to {host}/{repository}")]
    Denied { host: String, repository: String },
    /// The bytes served for a digest-pinned reference hash to something else.
    #[error("digest mismatch for {reference}: expected {expected}, got {actual}")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: Digest,
    },
    #[error("{reference}: the Docker-Content-Digest header {header:?} does not match the manifest body ({actual})")]
    HeaderDigestMismatch {
        reference: String,
        header: String,
        actual: Digest,
    },
    #[error("{what} for {reference} exceeds {limit} bytes")]
    TooLarge {
        what: String,
        reference: String,
        limit: u64,
    },
    #[error("invalid manifest for {reference}: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("no image for platform {platform} in {reference}; available platforms: {available}")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    /// The server answered, but with something malformed (bad Content-Range, bad token JSON).
    #[error("invalid response from {host}: {reason}")]
    InvalidResponse { host: String, reason: String },
    /// Connection failures, resets, 429 and 5xx that outlasted the retries; truncated bodies.
    #[error("registry {host} is unavailable: {reason}")]
    Unavailable { host: String, reason: String },
    /// A status we have no specific handling for.
    #[error("unexpected HTTP status {status} from {host} for {reference}")]
    UnexpectedStatus {
        host: String,
        reference: String,
        status: u16,
    },
    /// Unusable registry settings (unreadable CA file, bad key pair, bad mirror).
    #[error("invalid registry configuration for {host}: {reason}")]
    Config { host: String, reason: String },
    /// A docker config file that cannot be used. `source_name` is a path or "JSON".
    #[error("invalid docker credentials in {source_name}: {reason}")]
    Credentials { source_name: String, reason: String },
    /// A caller mistake, e.g. a resume offset past the blob's size.
    #[error("invalid registry request: {0}")]
    InvalidRequest(String),
}

impl RegistryError {
    /// Whether another endpoint (the next mirror, then the origin) may still have it.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}

impl Classify for RegistryError {
    fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::NotFound { .. } => ErrorKind::NotFound,
            RegistryError::AuthFailed { .. }
            | RegistryError::CredentialsRequired { .. }
            | RegistryError::PushDenied { .. }
            | RegistryError::Denied { .. } => ErrorKind::PermissionDenied,
            RegistryError::Rejected { status, .. } => match status {
                401 | 403 => ErrorKind::PermissionDenied,
                404 => ErrorKind::NotFound,
                _ => ErrorKind::InvalidArgument,
            },
            RegistryError::DigestMismatch { .. }
            | RegistryError::HeaderDigestMismatch { .. }
            | RegistryError::TooLarge { .. }
            | RegistryError::InvalidManifest { .. }
            | RegistryError::NoMatchingPlatform { .. }
            | RegistryError::InvalidResponse { .. }
            | RegistryError::Config { .. }
            | RegistryError::Credentials { .. }
            | RegistryError::InvalidRequest(_) => ErrorKind::InvalidArgument,
            RegistryError::Unavailable { .. } => ErrorKind::Unavailable,
            RegistryError::UnexpectedStatus { status, .. } => match status {
                429 | 500..=599 => ErrorKind::Unavailable,
                400..=499 => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            },
        }
    }
}

/// An error and its sources on one line: reqwest's own message is only "error sending request".
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
