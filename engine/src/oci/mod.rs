//! OCI value types shared by every layer.

mod digest;
mod platform;
pub mod reference;

pub use digest::{Digest, DigestError, Hasher};
pub use platform::{Platform, PlatformError};
pub use reference::{Reference, ReferenceError};
