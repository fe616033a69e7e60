//! Health checks over the kernel stack, one task per backend: a query every
//! `interval_ms`, `failures` consecutive failures take it down, `successes`
//! consecutive answers bring it back. For AF_XDP backends each round also
//! resolves the next hop's MAC (route, then neighbour table); the check's own
//! packets make the kernel resolve a missing neighbour. A backend whose MAC is
//! unknown is down, and the log says why. Each round's result goes to the run
//! loop as a [`Report`]; the task owns nothing else.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{info, warn};
use xdpdns_common::config::{BackendConfig, HealthConfig};
use xdpdns_common::ipc::BackendLive;

use crate::system::netlink;

/// One round's verdict on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub index: usize,
    /// The backend list the task was started for (see `Forwarding`).
    pub generation: u64,
    pub live: BackendLive,
}

/// The health check of one backend.
pub struct Task {
    pub index: usize,
    pub generation: u64,
    pub backend: BackendConfig,
    pub source: IpAddr,
    /// The AF_XDP interface: its next hop must be found there.
    pub ifindex: u32,
    /// The state to start from (a reload carries it over).
    pub up: bool,
    pub report: mpsc::UnboundedSender<Report>,
}

/// The health state machine of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    ok_streak: u32,
    fail_streak: u32,
}

impl Health {
    pub fn new() -> Self {
        Health {
            up: true,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    /// Records one check; returns true if `up` changed.
    pub fn record(&mut self, ok: bool, cfg: &HealthConfig) -> bool {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
        }
        let was = self.up;
        if self.up && self.fail_streak >= cfg.failures {
            self.up = false;
        } else if !self.up && self.ok_streak >= cfg.successes {
            self.up = true;
        }
        was != self.up
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

fn random_id() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u16
}

/// The health query: ID, RD, one question.
fn query(id: u16, cfg: &HealthConfig) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend(xdpdns_common::dns::name_to_wire(&cfg.qname).unwrap_or_else(|_| vec![0]));
    m.extend_from_slice(
        &xdpdns_common::dns::qtype_from_name(&cfg.qtype)
            .unwrap_or(1)
            .to_be_bytes(),
    );
    m.extend_from_slice(&[0, 1]);
    m
}

/// Sends one check and waits for its answer: any response but SERVFAIL.
async fn probe(sock: &UdpSocket, cfg: &HealthConfig) -> bool {
    let id = random_id();
    if sock.send(&query(id, cfg)).await.is_err() {
        return false;
    }
    let wait = async {
        let mut buf = [0u8; 4096];
        loop {
            let Ok(n) = sock.recv(&mut buf).await else {
                return false;
            };
            if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id && buf[2] & 0x80 != 0 {
                return buf[3] & 0x0f != 2;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(u64::from(cfg.timeout_ms)), wait)
        .await
        .unwrap_or(false)
}

/// The next-hop MAC of `addr` on `ifindex`, and why it is missing if it is.
fn next_hop_mac(addr: SocketAddr, ifindex: u32) -> Result<[u8; 6], String> {
    let route = netlink::route_to(addr.ip()).map_err(|e| format!("no route: {e}"))?;
    if route.oif != ifindex {
        return Err(format!(
            "routed through interface {} rather than the AF_XDP one",
            route.oif
        ));
    }
    match netlink::neighbour(ifindex, route.next_hop) {
        Ok(Some(mac)) => Ok(mac),
        Ok(None) => Err(format!(
            "no neighbour entry for next hop {} yet (the health check's traffic triggers resolution)",
            route.next_hop
        )),
        Err(e) => Err(format!("neighbour table: {e}")),
    }
}

impl Task {
    /// Checks the backend until aborted or the run loop is gone.
    pub async fn run(self) {
        let b = &self.backend;
        let opts = crate::sockets::Udp {
            connect: Some(b.address),
            ..crate::sockets::Udp::default()
        };
        let sock = match crate::sockets::udp(SocketAddr::new(self.source, 0), opts)
            .map_err(|e| e.to_string())
            .and_then(|fd| {
                UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(|e| e.to_string())
            }) {
            Ok(s) => s,
            Err(e) => {
                warn!(backend = %b.address, error = %e, "health check socket");
                return;
            }
        };
        let mut health = Health::new();
        health.up = self.up;
        let mut interval =
            tokio::time::interval(Duration::from_millis(u64::from(b.health.interval_ms)));
        let mut last_reason = String::new();
        loop {
            interval.tick().await;
            let ok = probe(&sock, &b.health).await;
            let changed = health.record(ok, &b.health);
            let (mac, reason) = match (b.xsk, b.mac) {
                (false, _) => (None, String::new()),
                (true, Some(m)) => (Some(m), String::new()),
                (true, None) => match next_hop_mac(b.address, self.ifindex) {
                    Ok(m) => (Some(m), String::new()),
                    Err(why) => (None, why),
                },
            };
            let up = health.up && (!b.xsk || mac.is_some());
            if changed {
                if health.up {
                    info!(backend = %b.address, "health check: up");
                } else {
                    warn!(backend = %b.address, failures = b.health.failures, "health check: down");
                }
            }
            if !reason.is_empty() && reason != last_reason {
                warn!(backend = %b.address, %reason, "AF_XDP backend treated as down: its next-hop MAC is unknown");
            }
            last_reason = reason;
            let report = Report {
                index: self.index,
                generation: self.generation,
                live: BackendLive { up, mac },
            };
            if self.report.send(report).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_govern_transitions() {
        let cfg = HealthConfig {
            failures: 3,
            successes: 2,
            ..HealthConfig::default()
        };
        let mut h = Health::new();
        assert!(!h.record(false, &cfg));
        assert!(!h.record(false, &cfg));
        assert!(h.record(false, &cfg), "third failure: down");
        assert!(!h.up);
        assert!(!h.record(true, &cfg));
        assert!(
            !h.record(false, &cfg),
            "a failure resets the success streak"
        );
        assert!(!h.record(true, &cfg));
        assert!(h.record(true, &cfg), "two successes: up");
        assert!(h.up);
    }

    #[test]
    fn the_query_is_well_formed() {
        let q = query(0x1234, &HealthConfig::default());
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[4..6], &[0, 1]);
        assert!(q.ends_with(&[0, 1, 0, 1]), "A IN");
    }
}
