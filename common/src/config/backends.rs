//! `[[backend]]`, `[[pool]]` and `[forwarding]`: where queries go when no
//! local rule answers them.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize};

use super::ConfigError;
use crate::dns;

/// One upstream DNS server.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `"192.0.2.2:53"` or `"[2001:db8::2]:53"`.
    #[serde(deserialize_with = "super::types::socket_addr")]
    pub address: SocketAddr,
    #[serde(default = "default_pool")]
    pub pool: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Forward over AF_XDP (true) or over ordinary UDP sockets (false).
    #[serde(default = "default_true")]
    pub xsk: bool,
    /// Next-hop MAC for AF_XDP forwarding; resolved from the routing and
    /// neighbour tables when absent.
    #[serde(default, deserialize_with = "opt_mac")]
    pub mac: Option<[u8; 6]>,
    /// Source address toward this backend; by default the one the route
    /// to it prefers.
    #[serde(default)]
    pub source: Option<IpAddr>,
    #[serde(default)]
    pub health: HealthConfig,
}

/// The health check of one backend.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_health_qname")]
    pub qname: String,
    #[serde(default = "default_health_qtype")]
    pub qtype: String,
    #[serde(default = "default_1000")]
    pub interval_ms: u32,
    #[serde(default = "default_1000")]
    pub timeout_ms: u32,
    /// Consecutive failures before the backend is marked down.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Consecutive successes before it is up again.
    #[serde(default = "default_successes")]
    pub successes: u32,
}

/// How a pool picks a backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    RoundRobin,
    Weighted,
    LeastOutstanding,
    ConsistentHash,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    #[serde(default)]
    pub policy: Policy,
    /// Its answers go through the packet cache (when `[cache]` has one).
    #[serde(default = "yes")]
    pub cache: bool,
}

fn yes() -> bool {
    true
}

/// What to send when a query cannot be forwarded or times out.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailAction {
    Drop,
    ServFail,
    Refused,
}

impl FailAction {
    /// The response code to answer with; `None`: send nothing.
    pub const fn rcode(self) -> Option<crate::dns::Rcode> {
        match self {
            FailAction::Drop => None,
            FailAction::ServFail => Some(crate::dns::Rcode::ServFail),
            FailAction::Refused => Some(crate::dns::Rcode::Refused),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForwardingSection {
    /// No reply by then: counted as a timeout and answered per `timeout_action`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    #[serde(default = "default_timeout_action")]
    pub timeout_action: FailAction,
    /// The answer when every backend of the pool is down.
    #[serde(default = "default_all_down_action")]
    pub all_down_action: FailAction,
    /// Forwarded queries leave from a port drawn at random per query from
    /// `port_base .. port_base + ports`, shared by all queues; the loader
    /// reserves every one with a socket.
    #[serde(default = "default_port_base")]
    pub port_base: u16,
    #[serde(default = "default_ports")]
    pub ports: u32,
    /// Sockets per backend and dataplane for socket backends (`xsk =
    /// false`): one is drawn per query, so replies come back to one of as
    /// many kernel-chosen ports.
    #[serde(default = "default_backend_sockets")]
    pub backend_sockets: u32,
    /// Queries one queue may have in flight (a power of two, at most 4096).
    /// Beyond it, an unanswered query older than `timeout_ms / 4` is given
    /// up for the new one (counted as `evicted` and as a timeout of its
    /// backend); with none that old, the new query is dropped (`no_slot`).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// TTLs of forwarded answers are raised to at least this (0: untouched).
    #[serde(default)]
    pub min_ttl: u32,
    /// TTLs of forwarded answers are lowered to at most this (0: untouched).
    #[serde(default)]
    pub max_ttl: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            qname: default_health_qname(),
            qtype: default_health_qtype(),
            interval_ms: 1000,
            timeout_ms: 1000,
            failures: default_failures(),
            successes: default_successes(),
        }
    }
}

impl Default for ForwardingSection {
    fn default() -> Self {
        ForwardingSection {
            timeout_ms: default_timeout_ms(),
            timeout_action: default_timeout_action(),
            all_down_action: default_all_down_action(),
            port_base: default_port_base(),
            ports: default_ports(),
            backend_sockets: default_backend_sockets(),
            max_in_flight: default_max_in_flight(),
            min_ttl: 0,
            max_ttl: 0,
        }
    }
}

pub const DEFAULT_POOL: &str = "default";

fn default_pool() -> String {
    DEFAULT_POOL.into()
}
fn default_weight() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_health_qname() -> String {
    "a.root-servers.net.".into()
}
fn default_health_qtype() -> String {
    "A".into()
}
fn default_1000() -> u32 {
    1000
}
fn default_failures() -> u32 {
    3
}
fn default_successes() -> u32 {
    1
}
fn default_timeout_ms() -> u32 {
    2000
}
fn default_timeout_action() -> FailAction {
    FailAction::Drop
}
fn default_all_down_action() -> FailAction {
    FailAction::ServFail
}
fn default_port_base() -> u16 {
    30000
}
fn default_ports() -> u32 {
    1024
}
fn default_backend_sockets() -> u32 {
    64
}
fn default_max_in_flight() -> u32 {
    4096
}

/// Parses "00:11:22:33:44:55".
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

fn opt_mac<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 6]>, D::Error> {
    let text = String::deserialize(d)?;
    parse_mac(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{text:?} is not a MAC address like \"00:11:22:33:44:55\""
        ))
    })
}

/// Checks backends, pools and forwarding against each other and `listen`.
pub(super) fn check(
    backends: &[BackendConfig],
    pools: &[PoolConfig],
    fwd: &ForwardingSection,
    listen: &[SocketAddr],
) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, p) in pools.iter().enumerate() {
        if p.name.is_empty() || !names.insert(p.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("pool[{i}].name"),
                format!("{:?} is empty or used twice", p.name),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (i, b) in backends.iter().enumerate() {
        let key = |f: &str| format!("backend[{i}].{f}");
        if b.address.port() == 0 || b.address.ip().is_unspecified() || b.address.ip().is_multicast()
        {
            return Err(ConfigError::invalid(
                key("address"),
                format!("{} cannot be a backend", b.address),
            ));
        }
        if listen.contains(&b.address) {
            return Err(ConfigError::invalid(
                key("address"),
                format!("{} is also a listen address: queries would loop", b.address),
            ));
        }
        if !seen.insert(b.address) {
            return Err(ConfigError::invalid(
                key("address"),
                format!("{} is listed twice", b.address),
            ));
        }
        if b.pool != DEFAULT_POOL && !names.contains(b.pool.as_str()) {
            return Err(ConfigError::invalid(
                key("pool"),
                format!(
                    "no [[pool]] named {:?} (declare it, or use \"default\")",
                    b.pool
                ),
            ));
        }
        if !(1..=1000).contains(&b.weight) {
            return Err(ConfigError::invalid(
                key("weight"),
                "must be between 1 and 1000",
            ));
        }
        if let Some(src) = b.source
            && src.is_ipv4() != b.address.is_ipv4()
        {
            return Err(ConfigError::invalid(
                key("source"),
                format!("{src} is not of the backend address's family"),
            ));
        }
        let h = &b.health;
        dns::name_to_wire(&h.qname).map_err(|e| ConfigError::invalid(key("health.qname"), e))?;
        if dns::qtype_from_name(&h.qtype).is_none() {
            return Err(ConfigError::invalid(
                key("health.qtype"),
                format!("{:?} is not a record type", h.qtype),
            ));
        }
        if !(100..=600_000).contains(&h.interval_ms) || !(10..=60_000).contains(&h.timeout_ms) {
            return Err(ConfigError::invalid(
                key("health"),
                "interval_ms must be 100..=600000 and timeout_ms 10..=60000",
            ));
        }
        if h.failures == 0 || h.successes == 0 {
            return Err(ConfigError::invalid(
                key("health"),
                "failures and successes must be at least 1",
            ));
        }
    }
    if !(10..=60_000).contains(&fwd.timeout_ms) {
        return Err(ConfigError::invalid(
            "forwarding.timeout_ms",
            "must be between 10 and 60000",
        ));
    }
    let n = fwd.max_in_flight;
    if !n.is_power_of_two() || !(64..=4096).contains(&n) {
        return Err(ConfigError::invalid(
            "forwarding.max_in_flight",
            format!("{n} must be a power of two from 64 to 4096"),
        ));
    }
    if fwd.port_base < 1024 {
        return Err(ConfigError::invalid(
            "forwarding.port_base",
            "must be at least 1024 (the forwarding ports start there)",
        ));
    }
    if !(1..=32768).contains(&fwd.ports) {
        return Err(ConfigError::invalid(
            "forwarding.ports",
            format!("{} must be from 1 to 32768", fwd.ports),
        ));
    }
    let end = u32::from(fwd.port_base) + fwd.ports;
    if end > 65536 {
        return Err(ConfigError::invalid(
            "forwarding.ports",
            format!(
                "port_base {} + ports {} runs past port 65535: lower one of them",
                fwd.port_base, fwd.ports
            ),
        ));
    }
    if let Some(l) = listen
        .iter()
        .find(|l| (u32::from(fwd.port_base)..end).contains(&u32::from(l.port())))
    {
        return Err(ConfigError::invalid(
            "forwarding.port_base",
            format!(
                "the forwarding ports {}..={} include listen port {} ({l}): move one of them",
                fwd.port_base,
                end - 1,
                l.port()
            ),
        ));
    }
    if !(1..=1024).contains(&fwd.backend_sockets) {
        return Err(ConfigError::invalid(
            "forwarding.backend_sockets",
            format!("{} must be from 1 to 1024", fwd.backend_sockets),
        ));
    }
    // Every dataplane gets backend_sockets sockets per backend.
    let per_dataplane =
        backends.len() as u64 * u64::from(fwd.backend_sockets) + listen.len() as u64 + 1;
    if per_dataplane > u64::from(crate::ipc::MAX_DESCRIPTORS) {
        return Err(ConfigError::invalid(
            "forwarding.backend_sockets",
            format!(
                "{} backends x {} sockets each is more than the {} descriptors a dataplane takes: lower it",
                backends.len(),
                fwd.backend_sockets,
                crate::ipc::MAX_DESCRIPTORS
            ),
        ));
    }
    Ok(())
}
