//! Query frames for benchmarks and allocation tests (built with the same
//! helpers the unit tests use).

pub use crate::dns::testing::query;
pub use crate::frame::testing::{FrameSpec, build};
