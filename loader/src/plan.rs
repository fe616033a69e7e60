//! The plan: a validated configuration resolved against this machine
//! (interface, queues, user, memory budget, paths). `check` prints it; `run`
//! carries it out. Resolving reads system facts and changes nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use xdpdns_common::config::{Config, Fixed, Live};
use xdpdns_common::maps::XDP_PACKET_HEADROOM;

use crate::system::capabilities;
use crate::system::interface::{self, Interface};
use crate::system::memlock::{self, MemlockLimit};
use crate::system::users::{self, Account};
use crate::system::{bpffs, memlock::human};

/// Everything `run` needs to know before it starts.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What cannot change while running; the live part is the run loop's.
    pub fixed: Fixed,
    pub interface: Interface,
    pub queues: Vec<u32>,
    pub account: Account,
    /// The TCP workers' and metrics exporter's user.
    pub tcp_account: Account,
    pub umem_per_queue: u64,
    pub umem_total: u64,
    pub memlock: MemlockLimit,
    pub pin_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub dataplane_binary: PathBuf,
    pub tcp_binary: PathBuf,
    pub metrics_binary: PathBuf,
    /// Largest frame AF_XDP takes (frame size minus the kernel's headroom).
    pub max_frame_len: u32,
    /// Whether a listen port needs CAP_NET_BIND_SERVICE.
    pub low_ports: bool,
    pub bpffs_mounted: bool,
    /// Things that work but deserve the operator's attention.
    pub warnings: Vec<String>,
}

/// Every reason the configuration cannot run here, one per line.
#[derive(Debug)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Plan {
    /// Resolves `config`, collecting every problem rather than stopping at the first.
    pub fn resolve(config: &Config) -> Result<Plan, Problems> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let (fixed, live) = (&config.fixed, &config.live);

        let iface = match interface::inspect(&fixed.xdp.interface) {
            Ok(i) => Some(i),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let queues = match &iface {
            Some(i) => match live.xdp.queues.resolve(i.queues) {
                Ok(q) => q,
                Err(e) => {
                    problems.push(format!("xdp.queues: {e} (counted by {})", i.queues_source));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        if let Some(i) = &iface {
            if i.queues > xdpdns_common::maps::MAX_DESTINATIONS {
                problems.push(format!(
                    "{} has {} queues; xdpdns supports at most 4096",
                    i.name, i.queues
                ));
            }
            if !i.link.up {
                warnings.push(format!(
                    "{} is down: nothing will arrive until it is up",
                    i.name
                ));
            }
            if let Some((mode, id)) = i.link.xdp {
                warnings.push(format!(
                    "{} already has an XDP program (id {id}, {}): `run` replaces it only if it is this instance's",
                    i.name,
                    mode.name()
                ));
            }
        }

        let account = match users::resolve(
            "dataplane",
            &fixed.dataplane.user,
            fixed.dataplane.group.as_deref(),
        ) {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let tcp_account = match users::resolve("tcp", &fixed.tcp.user, fixed.tcp.group.as_deref()) {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        if let (Some(d), Some(t)) = (&account, &tcp_account) {
            let me = nix::unistd::geteuid().as_raw();
            let my_gid = nix::unistd::getegid().as_raw();
            let control_gid = fixed
                .control
                .group
                .as_deref()
                .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
                .map(|g| g.gid.as_raw());
            for (key, a) in [("dataplane.user", d), ("tcp.user", t)] {
                // nobody (65534) is shared by unrelated daemons, and with it
                // their locked memory and their signals.
                if a.uid == 65534 || a.gid == 65534 {
                    problems.push(format!(
                        "{key}: {:?} is (or is in the group of) nobody, which other daemons share: \
                         give xdpdns workers users of their own (e.g. xdpdns-dp, xdpdns-tcp)",
                        a.name
                    ));
                }
                if a.gid == my_gid && me != 0 {
                    problems.push(format!(
                        "{key}: {:?} has the loader's group (gid {}): workers need groups of their own",
                        a.name, a.gid
                    ));
                }
                if Some(a.gid) == control_gid {
                    problems.push(format!(
                        "{key}: {:?} is in control.group: workers must not reach the control socket",
                        a.name
                    ));
                }
            }
            if d.uid == t.uid {
                problems.push(format!(
                    "tcp.user {:?} has the uid of dataplane.user {:?} ({}): give each kind of worker a user of its own",
                    t.name, d.name, t.uid
                ));
            }
            for a in [d, t] {
                if a.uid == me {
                    problems.push(format!(
                        "{:?} (uid {}) is the user the loader runs as: workers need users of their own",
                        a.name, a.uid
                    ));
                }
            }
        }

        let umem_per_queue = fixed.umem_bytes_per_queue();
        let umem_total = umem_per_queue * queues.len() as u64;
        let memlock = memlock::current().unwrap_or(MemlockLimit {
            soft: Some(0),
            hard: Some(0),
        });
        if !fixed.dataplane.keep_ipc_lock
            && let Some(m) = memlock::shortfall(
                umem_total,
                queues.len(),
                memlock.hard,
                &fixed.dataplane.user,
            )
        {
            problems.push(m);
        }

        if let Err(e) = crate::system::cpus::check(&live.dataplane.cpus) {
            problems.push(e);
        }

        let max_frame_len = fixed.xsk.frame_size - XDP_PACKET_HEADROOM;
        if let Some(i) = &iface {
            let largest = i.link.mtu + 14 + 4;
            if largest > max_frame_len {
                warnings.push(format!(
                    "frames up to {largest} bytes (MTU {} + Ethernet + VLAN) exceed the {max_frame_len} an \
                     xsk.frame_size of {} holds after the kernel's {XDP_PACKET_HEADROOM}-byte headroom; \
                     larger frames take the kernel path",
                    i.link.mtu, fixed.xsk.frame_size
                ));
            }
        }

        let bpffs_mounted = bpffs::is_bpffs(&fixed.xdp.pin_root);
        if !bpffs_mounted && !fixed.xdp.pin_root.starts_with(bpffs::DEFAULT_MOUNT) {
            problems.push(format!(
                "xdp.pin_root {:?} is not on a BPF filesystem: mount one there (`mount -t bpf bpf DIR`) \
                 or use a directory under {}",
                fixed.xdp.pin_root,
                bpffs::DEFAULT_MOUNT
            ));
        }

        let mut binary = |configured: Option<&PathBuf>, name: &str, key: &str| match worker_binary(
            configured, name, key,
        ) {
            Ok(p) => p,
            Err(e) => {
                problems.push(e);
                PathBuf::new()
            }
        };
        let dataplane_binary = binary(
            fixed.dataplane.binary.as_ref(),
            "xdpdns-dataplane",
            "dataplane.binary",
        );
        let tcp_binary = binary(fixed.tcp.binary.as_ref(), "xdpdns-tcp", "tcp.binary");
        // The exporter lives beside the TCP worker.
        let metrics_binary = if fixed.metrics.is_some() {
            let beside = tcp_binary.with_file_name("xdpdns-metrics");
            binary(
                Some(&beside),
                "xdpdns-metrics",
                "metrics (xdpdns-metrics beside tcp.binary)",
            )
        } else {
            PathBuf::new()
        };

        let f = &fixed.forwarding;
        if f.enabled {
            let ours = u32::from(f.port_base)..=u32::from(f.port_base) + f.ports - 1;
            match crate::system::sysctl::local_port_range() {
                Ok(eph)
                    if ours.start() <= &u32::from(*eph.end())
                        && &u32::from(*eph.start()) <= ours.end() =>
                {
                    problems.push(format!(
                        "forwarding.port_base/ports: {}..={} overlaps ip_local_port_range {}..={}, where the \
                         kernel picks other programs' source ports (one could take ours before we start, \
                         and we would narrow theirs): move the range below {} or above {}",
                        ours.start(),
                        ours.end(),
                        eph.start(),
                        eph.end(),
                        eph.start(),
                        eph.end()
                    ));
                }
                Ok(_) => {}
                Err(e) => warnings.push(e),
            }
        }
        // What the XDP program would answer itself (XDP_TX) but cannot here.
        let no_tx = iface
            .as_ref()
            .is_some_and(|i| !live.xdp.tx_answers.enabled(i.link.veth));
        let limits_answer =
            live.abuse.limit.as_ref().is_some_and(|l| {
                l.action != xdpdns_common::config::LimitAction::Drop || l.slip > 0
            });
        for (answers, who, what) in [
            (limits_answer, "limits", "limited queries"),
            (
                !live.abuse.answered_blocks.is_empty(),
                "blocks",
                "their queries",
            ),
        ] {
            if no_tx && answers {
                warnings.push(format!(
                    "{who} answer REFUSED or TC=1 with XDP_TX, which does not reach this interface's peer \
                     (a veth, xdp.tx_answers): {what} are dropped instead"
                ));
            }
        }
        if live.acl.open_to_a_family() {
            warnings.push(format!(
                "acl.allow admits {}: anyone who reaches this address may query{} — make sure that is intended",
                match (
                    live.acl.allow.iter().any(|p| p.is_everything() && p.is_ipv4()),
                    live.acl.allow.iter().any(|p| p.is_everything() && !p.is_ipv4())
                ) {
                    (true, true) => "every IPv4 and IPv6 address",
                    (true, false) => "every IPv4 address",
                    _ => "every IPv6 address",
                },
                if live.backend.is_empty() {
                    ""
                } else {
                    " and have it forwarded (an open resolver if a backend recurses)"
                }
            ));
        }

        let port_start = capabilities::unprivileged_port_start();
        let low_ports = live.listen.iter().any(|l| l.port() < port_start);
        let pin_dir = fixed.xdp.pin_root.join(&fixed.instance);
        let runtime_dir = fixed.runtime_dir.join(&fixed.instance);

        match (iface, account, tcp_account, problems.is_empty()) {
            (Some(interface), Some(account), Some(tcp_account), true) => Ok(Plan {
                fixed: fixed.clone(),
                interface,
                queues,
                account,
                tcp_account,
                umem_per_queue,
                umem_total,
                memlock,
                pin_dir,
                runtime_dir,
                dataplane_binary,
                tcp_binary,
                metrics_binary,
                max_frame_len,
                low_ports,
                bpffs_mounted,
                warnings,
            }),
            _ => Err(Problems(problems)),
        }
    }

    /// The plan as `xdpdns check` prints it, with the live settings `live`.
    pub fn describe(&self, live: &Live) -> String {
        let c = &self.fixed;
        let i = &self.interface;
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
        line("instance", c.instance.clone());
        line(
            "interface",
            format!(
                "{} (ifindex {}, {} queue(s) by {}, MTU {}, {})",
                i.name,
                i.ifindex,
                i.queues,
                i.queues_source,
                i.link.mtu,
                if i.link.up { "up" } else { "DOWN" }
            ),
        );
        line(
            "queues",
            self.queues
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
        line("xdp mode", format!("{:?}", c.xdp.mode).to_lowercase());
        for l in &live.listen {
            line("listen", format!("{l} (UDP: AF_XDP and kernel sockets)"));
        }
        line("acl", live.acl.describe());
        line("limits", live.abuse.describe());
        if c.forwarding.enabled {
            line(
                "forwarding",
                format!(
                    "source ports {}..={} ({} drawn at random per query), {} sockets per socket backend",
                    c.forwarding.port_base,
                    u32::from(c.forwarding.port_base) + c.forwarding.ports - 1,
                    c.forwarding.ports,
                    c.forwarding.backend_sockets
                ),
            );
        }
        line(
            "cache",
            if c.cache_slots == 0 {
                "none ([cache] entries = 0)".to_string()
            } else if !c.forwarding.enabled {
                format!(
                    "{} entries, unused: nothing is forwarded (no backends)",
                    c.cache_slots
                )
            } else {
                let t = &live.cache;
                format!(
                    "{} entries ({} shared by every queue; a restart resizes it), TTL {}..={} s, \
                     negative <= {} s, SERVFAIL {} s, stale {} s; UDP and TCP, queries with ECS or a \
                     cookie bypass it",
                    c.cache_slots,
                    human(xdpdns_common::cache::table_bytes(c.cache_slots)),
                    t.min,
                    t.max,
                    t.negative,
                    t.servfail,
                    t.stale
                )
            },
        );
        line(
            "umem",
            format!(
                "{} per queue ({} frames x {} B), {} for {} queue(s)",
                human(self.umem_per_queue),
                c.xsk.frames,
                c.xsk.frame_size,
                human(self.umem_total),
                self.queues.len()
            ),
        );
        let lim = |v: Option<u64>| v.map(human).unwrap_or_else(|| "unlimited".into());
        line(
            "memlock",
            if c.dataplane.keep_ipc_lock {
                "not charged (dataplanes keep CAP_IPC_LOCK)".into()
            } else {
                format!(
                    "RLIMIT_MEMLOCK soft {}, hard {}: {} needed by user {}",
                    lim(self.memlock.soft),
                    lim(self.memlock.hard),
                    human(self.umem_total),
                    self.account.name
                )
            },
        );
        line(
            "pin dir",
            format!(
                "{} ({})",
                self.pin_dir.display(),
                if self.bpffs_mounted {
                    "bpffs mounted"
                } else {
                    "bpffs not mounted: run mounts it"
                }
            ),
        );
        line("runtime dir", self.runtime_dir.display().to_string());
        line(
            "dataplanes",
            format!(
                "{} as {} (uid {}, gid {}), CAP_NET_RAW{} only",
                self.dataplane_binary.display(),
                self.account.name,
                self.account.uid,
                self.account.gid,
                if c.dataplane.keep_ipc_lock {
                    " + CAP_IPC_LOCK"
                } else {
                    ""
                }
            ),
        );
        let t = &live.tcp;
        line(
            "tcp",
            format!(
                "{} worker(s) {} as {} (uid {}, gid {}), no capabilities; per worker {} connections, \
                 {} per client, idle {} ms, I/O {} ms",
                c.tcp.workers,
                self.tcp_binary.display(),
                self.tcp_account.name,
                self.tcp_account.uid,
                self.tcp_account.gid,
                t.max_connections,
                t.max_connections_per_client,
                t.idle_timeout_ms,
                t.io_timeout_ms
            ),
        );
        if let Some(m) = &c.metrics {
            line(
                "metrics",
                format!(
                    "http://{}/metrics served by {} as {}, no capabilities",
                    m.address,
                    self.metrics_binary.display(),
                    self.tcp_account.name
                ),
            );
        }
        if !live.dataplane.cpus.is_empty() {
            let pins: Vec<String> = self
                .queues
                .iter()
                .filter_map(|q| {
                    crate::system::cpus::for_queue(&live.dataplane.cpus, *q)
                        .map(|cpu| format!("queue {q} on CPU {cpu}"))
                })
                .collect();
            line("cpus", pins.join(", "));
        }
        line(
            "frames",
            format!("up to {} B go to AF_XDP", self.max_frame_len),
        );
        for w in &self.warnings {
            line("warning", w.clone());
        }
        out
    }
}

/// Where a worker binary `name` is: configured, else next to this binary
/// (a build tree), else `../lib/xdpdns/` from it (the installed layout).
fn worker_binary(configured: Option<&PathBuf>, name: &str, key: &str) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        check_executable(p, name, key)?;
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let beside = exe.with_file_name(name);
    let installed = exe
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("lib/xdpdns").join(name));
    for candidate in std::iter::once(beside.clone()).chain(installed) {
        if check_executable(&candidate, name, key).is_ok() {
            return Ok(candidate);
        }
    }
    check_executable(&beside, name, key).map(|_| beside)
}

fn check_executable(path: &Path, name: &str, key: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "{key}: {}: {e} (install {name} next to xdpdns or set {key})",
            path.display()
        )
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{key}: {} is not an executable file",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(interface: &str, extra: &str) -> Config {
        Config::from_toml(&format!(
            "[xdp]\ninterface = \"{interface}\"\npin_root = \"/sys/fs/bpf/xdpdns-plan-test\"\n\
             [xsk]\nframes = 256\n[dataplane]\nuser = \"daemon\"\nbinary = \"/bin/true\"\n\
             [tcp]\nuser = \"bin\"\nbinary = \"/bin/true\"\n{extra}\n\
             [[listen]]\naddress = \"127.0.0.1:5353\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_plan_resolves_against_this_machine_and_describes_itself() {
        let c = config("lo", "");
        let plan = Plan::resolve(&c).unwrap_or_else(|p| panic!("{p}"));
        assert_eq!(plan.interface.name, "lo");
        assert!(plan.interface.queues >= 1);
        assert_eq!(plan.queues, (0..plan.interface.queues).collect::<Vec<_>>());
        assert_eq!(plan.umem_per_queue, 256 * 2048);
        assert_eq!(plan.max_frame_len, 2048 - 256);
        assert!(!plan.low_ports, "5353 needs no CAP_NET_BIND_SERVICE");
        assert_eq!(plan.account.name, "daemon");
        assert_eq!(
            plan.pin_dir,
            Path::new("/sys/fs/bpf/xdpdns-plan-test/default")
        );
        let d = plan.describe(&c.live);
        assert!(d.contains("interface     lo (ifindex"), "{d}");
        assert!(d.contains("listen        127.0.0.1:5353"), "{d}");
        assert!(d.contains("/bin/true as daemon"), "{d}");
        assert!(
            d.contains("acl           127.0.0.0/8, ::1/128, 10.0.0.0/8"),
            "the effective ACL is printed: {d}"
        );
        assert!(!d.contains("acl.allow admits"), "{d}");
    }

    #[test]
    fn workers_need_users_of_their_own() {
        let mut c = config("lo", "");
        c.fixed.dataplane.user = "nobody".into();
        let p = Plan::resolve(&c).unwrap_err().to_string();
        assert!(
            p.contains("dataplane.user: \"nobody\" is (or is in the group of) nobody"),
            "{p}"
        );
        let mut c = config("lo", "");
        c.fixed.tcp.user = "daemon".into();
        let p = Plan::resolve(&c).unwrap_err().to_string();
        assert!(p.contains("has the uid of dataplane.user"), "{p}");
    }

    #[test]
    fn an_open_acl_is_warned_about() {
        let c = config("lo", "[acl]\nallow = [\"0.0.0.0/0\", \"::/0\"]");
        let plan = Plan::resolve(&c).unwrap_or_else(|p| panic!("{p}"));
        let d = plan.describe(&c.live);
        assert!(
            d.contains("acl.allow admits every IPv4 and IPv6 address"),
            "{d}"
        );
    }

    #[test]
    fn a_forwarding_range_inside_the_ephemeral_ports_is_refused() {
        let eph = crate::system::sysctl::local_port_range().unwrap();
        let mut c = config(
            "lo",
            "[[backend]]\naddress = \"127.0.0.1:53\"\nsource = \"127.0.0.1\"",
        );
        c.fixed.forwarding.port_base = *eph.start();
        c.fixed.forwarding.ports = 16;
        let p = Plan::resolve(&c).unwrap_err().to_string();
        assert!(p.contains("overlaps ip_local_port_range"), "{p}");
        // The default range (30000..=31023) is below Linux's default 32768.
        if *eph.start() > 31023 {
            c.fixed.forwarding.port_base = 30000;
            c.fixed.forwarding.ports = 1024;
            Plan::resolve(&c).unwrap_or_else(|p| panic!("{p}"));
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = config("xdt-no-such0", "");
        let mut c2 = c.clone();
        c2.fixed.dataplane.user = "xdt-no-such-user".into();
        c2.fixed.dataplane.binary = Some("/nonexistent/dp".into());
        let p = Plan::resolve(&c2).unwrap_err().to_string();
        assert!(p.contains("no interface \"xdt-no-such0\""), "{p}");
        assert!(p.contains("no user \"xdt-no-such-user\""), "{p}");
        assert!(p.contains("dataplane.binary: /nonexistent/dp"), "{p}");
        let mut c3 = config("lo", "");
        c3.live.xdp.queues = xdpdns_common::config::QueueSelection::List(vec![700]);
        let p = Plan::resolve(&c3).unwrap_err().to_string();
        assert!(p.contains("xdp.queues: queue 700 does not exist"), "{p}");
    }
}
