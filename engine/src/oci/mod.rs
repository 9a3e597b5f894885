//! OCI value types shared by every layer.

mod platform;

pub use platform::{Platform, PlatformError};
