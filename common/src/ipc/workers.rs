//! Messages between the loader and its other unprivileged workers, over the
//! same SOCK_SEQPACKET transport as the dataplanes' ([`super::encode`],
//! [`super::decode`], descriptors as SCM_RIGHTS):
//!
//! - **TCP workers** (`xdpdns-tcp`): the listeners (one SO_REUSEPORT
//!   socket per listen address, bound by the loader) come with [`ToTcp::Init`]
//!   and [`ToTcp::Reconfigure`]; counters go back as [`FromTcp::Stats`].
//! - **The metrics exporter** (`xdpdns-metrics`): its listener comes with
//!   [`ToMetrics::Init`]; every [`ToMetrics::Snapshot`] carries a sealed
//!   memfd holding the Prometheus text the loader rendered.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{BackendLive, ForwardSpec, SetupFailure};
use crate::config::{AnswerSpec, TcpLimits};
use crate::stats::TcpCounters;

/// Bumped whenever a worker message changes shape.
pub const WORKER_PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToTcp {
    /// First message; its descriptors are one listener per `listen` entry.
    Init(Box<TcpInit>),
    /// New answer rules, backends, limits and listeners (a reload),
    /// replacing the previous ones; open connections keep theirs.
    Reconfigure(Box<TcpConfig>),
    /// More descriptors of the message just sent.
    MoreFds,
    /// Health and next-hop MAC of every backend, in `ForwardSpec` order.
    Backends(Vec<BackendLive>),
    /// Stop accepting, finish what is in flight (briefly), exit 0.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpInit {
    pub protocol: u32,
    pub instance: String,
    /// Which worker this is (0-based), for logs and status.
    pub worker: u32,
    pub stats_interval_ms: u32,
    pub config: TcpConfig,
}

/// What a TCP worker serves with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpConfig {
    pub answer: AnswerSpec,
    pub forward: Option<ForwardSpec>,
    pub limits: TcpLimits,
    /// The listen address of each listener passed with this message.
    pub listen: Vec<SocketAddr>,
    /// Descriptors that come with it (this message and `MoreFds`).
    pub descriptors: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromTcp {
    /// Serving.
    Ready { protocol: u32 },
    /// Periodic counters; also the heartbeat.
    Stats(Box<TcpCounters>),
    /// Setup failed; the worker exits after sending this.
    Failed(SetupFailure),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToMetrics {
    /// First message; its one descriptor is the HTTP listener.
    Init {
        protocol: u32,
        instance: String,
        /// Concurrent HTTP connections served; more are closed.
        max_connections: u32,
        /// Scrapers allowed; connections from elsewhere are closed at once.
        allow: Vec<crate::net::Prefix>,
    },
    /// The latest exposition text: one descriptor, a sealed memfd.
    Snapshot,
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MetricsCounters {
    pub requests: u64,
    /// Connections closed at once for the connection cap.
    pub refused: u64,
    /// Requests that were not `GET /metrics` (answered 404/405) or broken.
    pub bad_requests: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromMetrics {
    Ready {
        protocol: u32,
    },
    /// Periodic counters; also the heartbeat.
    Stats(MetricsCounters),
    Failed(SetupFailure),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ipc::{decode, encode};

    #[test]
    fn worker_messages_round_trip() {
        let cfg = Config::from_toml(
            "[xdp]\ninterface = \"eth0\"\n[[listen]]\naddress = \"192.0.2.1:53\"\n",
        )
        .unwrap();
        let init = ToTcp::Init(Box::new(TcpInit {
            protocol: WORKER_PROTOCOL_VERSION,
            instance: "x".into(),
            worker: 1,
            stats_interval_ms: 500,
            config: TcpConfig {
                answer: cfg.live.answer_spec(),
                forward: None,
                limits: cfg.live.tcp,
                listen: cfg.live.listen.clone(),
                descriptors: 1,
            },
        }));
        let back: ToTcp = decode(&encode(&init).unwrap()).unwrap();
        assert_eq!(back, init);
        let stats = FromTcp::Stats(Box::new(TcpCounters::new()));
        let back: FromTcp = decode(&encode(&stats).unwrap()).unwrap();
        assert_eq!(back, stats);
        let m = FromMetrics::Stats(MetricsCounters {
            requests: 3,
            ..Default::default()
        });
        let back: FromMetrics = decode(&encode(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        // A message of one kind is not another kind.
        assert!(decode::<ToTcp>(&encode(&m).unwrap()).is_err());
    }
}
