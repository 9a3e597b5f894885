//! Small concurrency helpers shared by the layers above.

mod singleflight;

pub use singleflight::Singleflight;
