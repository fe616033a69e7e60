//! The unprivileged processes the loader starts: dataplanes, one per queue,
//! and the TCP workers and metrics exporter. Each is started with reduced
//! privileges (`privdrop`), spoken to over a socketpair (`channel`), watched
//! and restarted by its own supervisor task (`supervisor` for queues,
//! `service` for the others); [`queues::Queues`] and [`service::Services`]
//! own the supervisors and what they report.

pub mod backoff;
pub mod channel;
pub mod checks;
pub mod privdrop;
pub mod process;
pub mod queues;
pub mod service;
pub mod spawn;
pub mod supervisor;

use std::net::SocketAddr;

use xdpdns_common::config::{AnswerSpec, SupervisorSection};
use xdpdns_common::ipc::ForwardSpec;

/// What a dataplane starting now is given, and what running ones are
/// reconfigured with when it changes. Published by the run loop.
#[derive(Debug, Clone, PartialEq)]
pub struct DataplaneSpec {
    pub answer: AnswerSpec,
    /// Kernel-path sockets: one per listen address.
    pub listen: Vec<SocketAddr>,
    /// Forwarding, without health (that comes separately).
    pub forward: Option<ForwardSpec>,
    pub batch_size: u32,
    pub idle_nap_us: u32,
    pub stats_interval_ms: u32,
    pub cpus: Vec<u32>,
    pub supervisor: SupervisorSection,
}

impl DataplaneSpec {
    /// Whether running dataplanes must be told: rules, sockets, backends.
    pub fn reconfigures(&self, old: &DataplaneSpec) -> bool {
        self.answer != old.answer || self.listen != old.listen || self.forward != old.forward
    }
}
