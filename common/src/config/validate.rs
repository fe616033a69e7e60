//! Checks that need more than types: ranges, relations, names used in paths.

use std::collections::HashSet;

use super::types::File;
use super::{ConfigError, QueueSelection, rules};

const MAX_FRAMES: u32 = 1 << 20;
const MIN_FRAMES: u32 = 64;
/// CPU_SETSIZE: the CPUs a `cpu_set_t` holds.
pub const MAX_CPUS: u32 = 1024;

impl File {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_instance(&self.instance)?;
        if !self.runtime_dir.is_absolute() {
            return Err(ConfigError::invalid(
                "runtime_dir",
                format!("{:?} must be an absolute path", self.runtime_dir),
            ));
        }
        check_interface(&self.xdp.interface)?;
        self.cache.validate()?;
        if let QueueSelection::List(ids) = &self.xdp.queues {
            if ids.is_empty() {
                return Err(ConfigError::invalid(
                    "xdp.queues",
                    "the list is empty: name at least one queue, or write \"all\"",
                ));
            }
            let mut seen = HashSet::new();
            if let Some(dup) = ids.iter().find(|q| !seen.insert(**q)) {
                return Err(ConfigError::invalid(
                    "xdp.queues",
                    format!("queue {dup} is listed twice"),
                ));
            }
        }
        if !self.xdp.pin_root.is_absolute() {
            return Err(ConfigError::invalid(
                "xdp.pin_root",
                format!(
                    "{:?} must be an absolute path on a bpffs, e.g. \"/sys/fs/bpf/xdpdns\"",
                    self.xdp.pin_root
                ),
            ));
        }
        let frames = self.xsk.frames;
        if !(MIN_FRAMES..=MAX_FRAMES).contains(&frames) || !frames.is_power_of_two() {
            return Err(ConfigError::invalid(
                "xsk.frames",
                format!("{frames} must be a power of two from {MIN_FRAMES} to {MAX_FRAMES}"),
            ));
        }
        if !matches!(self.xsk.frame_size, 2048 | 4096) {
            return Err(ConfigError::invalid(
                "xsk.frame_size",
                format!("{} must be 2048 or 4096", self.xsk.frame_size),
            ));
        }
        let batch = self.xsk.batch_size;
        if batch == 0 || batch > 1024 || batch > frames / 4 {
            return Err(ConfigError::invalid(
                "xsk.batch_size",
                format!(
                    "{batch} must be between 1 and 1024 and at most a quarter of xsk.frames ({})",
                    frames / 4
                ),
            ));
        }
        if self.xsk.idle_nap_us > 1000 {
            return Err(ConfigError::invalid(
                "xsk.idle_nap_us",
                format!(
                    "{} must be at most 1000 (it adds up to that much latency)",
                    self.xsk.idle_nap_us
                ),
            ));
        }
        check_user("dataplane.user", &self.dataplane.user)?;
        self.tcp.validate()?;
        if self.tcp.user == self.dataplane.user {
            return Err(ConfigError::invalid(
                "tcp.user",
                format!(
                    "{:?} is also dataplane.user: give the TCP workers a user of their own",
                    self.tcp.user
                ),
            ));
        }
        if self.dataplane.user == "root" {
            return Err(ConfigError::invalid(
                "dataplane.user",
                "dataplanes never run as root: name an unprivileged user of their own such as \"xdpdns-dp\"",
            ));
        }
        if let Some(binary) = &self.dataplane.binary
            && !binary.is_absolute()
        {
            return Err(ConfigError::invalid(
                "dataplane.binary",
                format!("{binary:?} must be an absolute path"),
            ));
        }
        if let Some(cpu) = self.dataplane.cpus.iter().find(|c| **c >= MAX_CPUS) {
            return Err(ConfigError::invalid(
                "dataplane.cpus",
                format!("CPU {cpu} is beyond the {MAX_CPUS} CPUs an affinity mask holds"),
            ));
        }
        if !(100..=60_000).contains(&self.dataplane.stats_interval_ms) {
            return Err(ConfigError::invalid(
                "dataplane.stats_interval_ms",
                "must be between 100 and 60000",
            ));
        }
        if self.dataplane.edns_udp_size < 512 {
            return Err(ConfigError::invalid(
                "dataplane.edns_udp_size",
                "must be at least 512 (RFC 6891)",
            ));
        }
        let sup = &self.supervisor;
        if sup.heartbeat_timeout_ms < 2 * self.dataplane.stats_interval_ms
            || sup.heartbeat_timeout_ms > 600_000
        {
            return Err(ConfigError::invalid(
                "supervisor.heartbeat_timeout_ms",
                format!(
                    "{} must be at least twice dataplane.stats_interval_ms ({}) and at most 600000",
                    sup.heartbeat_timeout_ms, self.dataplane.stats_interval_ms
                ),
            ));
        }
        if sup.restart_window_s == 0 {
            return Err(ConfigError::invalid(
                "supervisor.restart_window_s",
                "must be at least 1",
            ));
        }
        if let Some(m) = &self.metrics {
            if m.address.port() == 0 {
                return Err(ConfigError::invalid(
                    "metrics.address",
                    "needs a port, e.g. \"127.0.0.1:9153\"",
                ));
            }
            for (i, p) in m.allow.iter().enumerate() {
                p.parse::<crate::net::Prefix>()
                    .map_err(|e| ConfigError::invalid(format!("metrics.allow[{i}]"), e))?;
            }
        }
        self.validate_listen()?;
        if self.forwarding.max_ttl != 0 && self.forwarding.min_ttl > self.forwarding.max_ttl {
            return Err(ConfigError::invalid(
                "forwarding.min_ttl",
                "is above forwarding.max_ttl",
            ));
        }
        for (i, rule) in self.rule.iter().enumerate() {
            rules::check(i, rule)?;
            if let Some(p) = &rule.pool {
                if rule.action != super::Action::Forward {
                    return Err(ConfigError::invalid(
                        format!("rule[{i}].pool"),
                        "a pool goes with action = \"forward\"",
                    ));
                }
                let known =
                    p == super::backends::DEFAULT_POOL || self.pool.iter().any(|q| &q.name == p);
                if !known {
                    return Err(ConfigError::invalid(
                        format!("rule[{i}].pool"),
                        format!("no [[pool]] named {p:?}"),
                    ));
                }
            }
        }
        rules::check_order(&self.rule)?;
        let listen: Vec<_> = self.listen.iter().map(|l| l.address).collect();
        super::backends::check(&self.backend, &self.pool, &self.forwarding, &listen)?;
        self.acl.compile()?;
        super::abuse::compile(self.limits.as_ref(), &self.block, &self.dynamic_block)?;
        Ok(())
    }

    fn validate_listen(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(
                "listen",
                "no [[listen]] address: add one, e.g. [[listen]] address = \"192.0.2.1:53\"",
            ));
        }
        if self.listen.len() > crate::maps::MAX_LISTEN as usize {
            return Err(ConfigError::invalid(
                "listen",
                format!(
                    "{} addresses; at most {} (the XDP program counts each one)",
                    self.listen.len(),
                    crate::maps::MAX_LISTEN
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, l) in self.listen.iter().enumerate() {
            let key = format!("listen[{i}].address");
            let ip = l.address.ip();
            if l.address.port() == 0 {
                return Err(ConfigError::invalid(key, "port 0 cannot be served"));
            }
            if ip.is_unspecified() {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{ip} is a wildcard: AF_XDP matches exact destinations, name the interface's address"
                    ),
                ));
            }
            if ip.is_multicast() {
                return Err(ConfigError::invalid(
                    key,
                    format!("{ip} is a multicast address"),
                ));
            }
            if !seen.insert(l.address) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{} is listed twice", l.address),
                ));
            }
        }
        Ok(())
    }
}

/// A worker user: named, and not root.
pub(super) fn check_user(key: &str, user: &str) -> Result<(), ConfigError> {
    if user.is_empty() {
        return Err(ConfigError::invalid(key, "must name a user"));
    }
    if user == "root" {
        return Err(ConfigError::invalid(
            key,
            "workers never run as root: name an unprivileged user of their own",
        ));
    }
    Ok(())
}

fn check_instance(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "instance",
            format!(
                "{name:?} must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_' (it names directories)"
            ),
        ))
    }
}

fn check_interface(name: &str) -> Result<(), ConfigError> {
    // IFNAMSIZ is 16 including the terminating NUL.
    let ok = !name.is_empty()
        && name.len() < 16
        && !name.contains(['/', ' ', '\0'])
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "xdp.interface",
            format!("{name:?} is not a valid interface name (1-15 bytes, no '/' or spaces)"),
        ))
    }
}
