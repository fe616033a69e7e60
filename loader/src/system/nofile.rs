//! RLIMIT_NOFILE: forwarding holds a socket per port of its range and
//! family, and each dataplane a socket pool per backend.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors the loader uses besides the ones counted by [`need`]:
/// stdio, the control and metrics listeners, netlink, epoll, BPF maps and
/// programs, one socketpair per queue, TCP connections headroom.
const BASE: u64 = 256;

/// What one process needs open at once: the port reservations (the
/// loader), one dataplane's descriptors (the loader while handing them over,
/// and the dataplane), and connections (a TCP worker's clients and backend
/// connections).
pub fn need(reserved_ports: u64, per_dataplane: u64, connections: u64) -> u64 {
    BASE + reserved_ports + per_dataplane + connections
}

/// Raises the soft limit to the hard one (children inherit it) and returns
/// the soft limit now.
pub fn raise_soft_to_hard() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft != hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// `None` if `need` descriptors fit under `limit`; else what to change.
pub fn shortfall(need: u64, limit: u64) -> Option<String> {
    (need > limit).then(|| {
        format!(
            "this configuration needs about {need} open files (forwarding.ports per address family, \
             forwarding.backend_sockets per backend, tcp.max_connections) but RLIMIT_NOFILE \
             is {limit}: raise LimitNOFILE= (or `ulimit -Hn`), or lower those settings"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_every_part_and_names_the_fix() {
        assert_eq!(need(2048, 130, 100), BASE + 2048 + 130 + 100);
        assert!(shortfall(1000, 1000).is_none());
        let m = shortfall(5000, 1024).unwrap();
        assert!(m.contains("5000") && m.contains("LimitNOFILE"), "{m}");
        let soft = raise_soft_to_hard().unwrap();
        assert_eq!(soft, getrlimit(Resource::RLIMIT_NOFILE).unwrap().1);
    }
}
