//! xdpdns' unprivileged workers besides the dataplanes, started and
//! supervised by the loader like them but with no capability at all:
//!
//! - `xdpdns-tcp` ([`server`]): DNS over TCP on every listen address, the
//!   same pipeline as UDP (ACL, rules, local answers, forwarding), forwarded
//!   over pooled, pipelined backend connections ([`upstream`]), with limits
//!   on what a client may hold ([`admission`], [`framing`], [`conn`]).
//! - `xdpdns-metrics` ([`exporter`]): the Prometheus endpoint, an HTTP
//!   server (hyper) over snapshots the loader renders.
//!
//! Both talk to the loader over [`channel`] and run under [`sandbox`].

pub mod admission;
pub mod channel;
pub mod conn;
pub mod exporter;
pub mod framing;
pub mod sandbox;
pub mod server;
pub mod startup;
pub mod upstream;
