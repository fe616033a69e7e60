//! What the loader must hold, and why: checked up front so a missing
//! capability is one clear message, not a failure halfway through start-up.

use caps::{CapSet, Capability};

/// A capability the loader needs, with the reason an operator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub cap: Capability,
    pub why: &'static str,
}

/// The capabilities `run` needs for this configuration.
pub fn needed(low_ports: bool, keep_ipc_lock: bool) -> Vec<Need> {
    let mut v = vec![
        Need {
            cap: Capability::CAP_SYS_ADMIN,
            why: "load the XDP program and its maps, pin them, mount bpffs",
        },
        Need {
            cap: Capability::CAP_NET_ADMIN,
            why: "attach the XDP program to the interface, size socket buffers",
        },
        Need {
            cap: Capability::CAP_NET_RAW,
            why: "grant CAP_NET_RAW to dataplanes (socket(AF_XDP) needs it)",
        },
        Need {
            cap: Capability::CAP_SETUID,
            why: "start dataplanes as dataplane.user",
        },
        Need {
            cap: Capability::CAP_SETGID,
            why: "start dataplanes with dataplane.user's group",
        },
        Need {
            cap: Capability::CAP_SETPCAP,
            why: "remove every other capability from the dataplanes' bounding set",
        },
        Need {
            cap: Capability::CAP_KILL,
            why: "kill a hung or misbehaving worker (workers run as users of their own)",
        },
    ];
    if low_ports {
        v.push(Need {
            cap: Capability::CAP_NET_BIND_SERVICE,
            why: "bind the kernel-path sockets on ports below ip_unprivileged_port_start",
        });
    }
    if keep_ipc_lock {
        v.push(Need {
            cap: Capability::CAP_IPC_LOCK,
            why: "grant CAP_IPC_LOCK to dataplanes (dataplane.keep_ipc_lock = true)",
        });
    }
    v
}

/// The needs this process's effective set lacks.
pub fn missing(needs: &[Need]) -> Result<Vec<Need>, caps::errors::CapsError> {
    let effective = caps::read(None, CapSet::Effective)?;
    Ok(needs
        .iter()
        .filter(|n| !effective.contains(&n.cap))
        .cloned()
        .collect())
}

/// One message listing every missing capability and its purpose.
pub fn describe_missing(missing: &[Need]) -> String {
    let list: Vec<String> = missing
        .iter()
        .map(|n| format!("{} ({})", n.cap, n.why))
        .collect();
    format!(
        "the loader lacks {}: run it as root or grant these capabilities \
         (systemd: AmbientCapabilities=/CapabilityBoundingSet=)",
        list.join(", ")
    )
}

/// The first port that needs CAP_NET_BIND_SERVICE in this network namespace.
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_follow_the_configuration() {
        let base = needed(false, false);
        assert!(
            !base
                .iter()
                .any(|n| n.cap == Capability::CAP_NET_BIND_SERVICE)
        );
        assert!(
            needed(true, false)
                .iter()
                .any(|n| n.cap == Capability::CAP_NET_BIND_SERVICE)
        );
        assert!(
            needed(false, true)
                .iter()
                .any(|n| n.cap == Capability::CAP_IPC_LOCK)
        );
        let msg = describe_missing(&base[..2]);
        assert!(msg.contains("CAP_SYS_ADMIN (load the XDP program"), "{msg}");
        assert!(msg.contains("CAP_NET_ADMIN"), "{msg}");
    }
}
