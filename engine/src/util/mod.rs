//! Small helpers shared by the layers above: concurrency, variable expansion, CA file lookup.

mod ca_files;
mod expand;
mod singleflight;

pub use ca_files::ca_files;
pub use expand::{env_lookup, expand};
pub use singleflight::Singleflight;
