//! Types shared by the privileged loader (`xdpdns`) and the unprivileged
//! dataplanes (`xdpdns-dataplane`).
//!
//! Like `aya-obj`, this crate only describes: it parses, validates and encodes,
//! and never makes a system call. Reading files, binding sockets and talking to
//! the kernel is the business of the binaries.

pub mod cache;
pub mod config;
pub mod dns;
pub mod hash;
pub mod inflight;
pub mod ipc;
#[cfg(feature = "logging")]
pub mod logging;
pub mod maps;
pub mod net;
pub mod stats;
