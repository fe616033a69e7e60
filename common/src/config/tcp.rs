//! `[tcp]`: DNS over TCP, served on every listen address by unprivileged
//! TCP workers (no capabilities, their own user) that run the same pipeline
//! as UDP, and what a TCP client may hold of them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpSection {
    /// Worker processes; they share the listeners (one SO_REUSEPORT
    /// listener each per address, so the kernel spreads connections).
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// The workers' user (never root, never the dataplanes' or the loader's).
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub group: Option<String>,
    /// Path of `xdpdns-tcp`; by default next to the `xdpdns` binary.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: u32,
    #[serde(default = "default_max_queries_per_connection")]
    pub max_queries_per_connection: u32,
    #[serde(default = "default_max_connection_duration_ms")]
    pub max_connection_duration_ms: u32,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u32,
    #[serde(default = "default_io_timeout_ms")]
    pub io_timeout_ms: u32,
    #[serde(default = "default_max_in_flight_per_connection")]
    pub max_in_flight_per_connection: u32,
    #[serde(default = "default_backend_connections")]
    pub backend_connections: u32,
}

impl Default for TcpSection {
    fn default() -> Self {
        TcpSection {
            workers: default_workers(),
            user: default_user(),
            group: None,
            binary: None,
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            max_queries_per_connection: default_max_queries_per_connection(),
            max_connection_duration_ms: default_max_connection_duration_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            io_timeout_ms: default_io_timeout_ms(),
            max_in_flight_per_connection: default_max_in_flight_per_connection(),
            backend_connections: default_backend_connections(),
        }
    }
}

/// What a TCP client may hold, and how long. Reloads live (new connections
/// see the new limits; open ones keep theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpLimits {
    /// Open client connections per worker; more are closed at once.
    pub max_connections: u32,
    /// Open connections from one client address per worker.
    pub max_connections_per_client: u32,
    /// Queries on one connection, then it is closed after the answers; 0:
    /// no limit (`max_connection_duration_ms` bounds a connection anyway).
    pub max_queries_per_connection: u32,
    /// A connection's whole life.
    pub max_connection_duration_ms: u32,
    /// Silence between queries.
    pub idle_timeout_ms: u32,
    /// Reading one message once it started, and writing one answer (a
    /// client that stops reading is cut); also the sockets' TCP_USER_TIMEOUT.
    pub io_timeout_ms: u32,
    /// Queries of one connection answered concurrently (RFC 7766 pipelining);
    /// more wait until answers are written.
    pub max_in_flight_per_connection: u32,
    /// Pipelined connections per backend per worker.
    pub backend_connections: u32,
}

/// Who runs the TCP workers, and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpFixed {
    pub workers: u32,
    pub user: String,
    pub group: Option<String>,
    pub binary: Option<PathBuf>,
}

impl TcpSection {
    pub(super) fn split(self) -> (TcpFixed, TcpLimits) {
        let TcpSection {
            workers,
            user,
            group,
            binary,
            max_connections,
            max_connections_per_client,
            max_queries_per_connection,
            max_connection_duration_ms,
            idle_timeout_ms,
            io_timeout_ms,
            max_in_flight_per_connection,
            backend_connections,
        } = self;
        (
            TcpFixed {
                workers,
                user,
                group,
                binary,
            },
            TcpLimits {
                max_connections,
                max_connections_per_client,
                max_queries_per_connection,
                max_connection_duration_ms,
                idle_timeout_ms,
                io_timeout_ms,
                max_in_flight_per_connection,
                backend_connections,
            },
        )
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let within = |key: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    format!("tcp.{key}"),
                    format!("{v} must be from {lo} to {hi}"),
                ))
            }
        };
        within("workers", self.workers, 1, 64)?;
        within("max_connections", self.max_connections, 1, 1_000_000)?;
        within(
            "max_connections_per_client",
            self.max_connections_per_client,
            1,
            self.max_connections,
        )?;
        within(
            "max_connection_duration_ms",
            self.max_connection_duration_ms,
            1000,
            86_400_000,
        )?;
        within("idle_timeout_ms", self.idle_timeout_ms, 100, 600_000)?;
        within("io_timeout_ms", self.io_timeout_ms, 100, 600_000)?;
        within(
            "max_in_flight_per_connection",
            self.max_in_flight_per_connection,
            1,
            1024,
        )?;
        within("backend_connections", self.backend_connections, 1, 64)?;
        super::validate::check_user("tcp.user", &self.user)?;
        Ok(())
    }
}

fn default_workers() -> u32 {
    1
}
fn default_user() -> String {
    "xdpdns-tcp".into()
}
fn default_max_connections() -> u32 {
    4096
}
fn default_max_connections_per_client() -> u32 {
    32
}
fn default_max_queries_per_connection() -> u32 {
    0
}
fn default_max_connection_duration_ms() -> u32 {
    300_000
}
fn default_idle_timeout_ms() -> u32 {
    10_000
}
fn default_io_timeout_ms() -> u32 {
    5_000
}
fn default_max_in_flight_per_connection() -> u32 {
    64
}
fn default_backend_connections() -> u32 {
    2
}
