//! The XDP program and its maps: loading, attaching, pinning, adopting a
//! previous run's pins, and reading and writing the maps.

mod attach;
mod maps;
mod pins;
mod steer;
mod tables;

pub use attach::{Attached, XskSlot, attach};
pub use maps::XdpCounters;
pub use steer::{ReplySteer, SteerCounters};
pub use tables::Steering;

/// The compiled program, embedded at build time (see build.rs).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpdns.bpf.o"));
