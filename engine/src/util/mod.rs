//! Small concurrency helpers shared by the layers above.

mod expand;
mod singleflight;

pub use expand::{env_lookup, expand};
pub use singleflight::Singleflight;
