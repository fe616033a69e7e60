//! The configuration as the rest of xdpdns sees it: [`Fixed`], what a
//! running instance is built from and cannot change without a restart
//! (interface, pins, UMEM geometry, users, sockets, port ranges), and
//! [`Live`], what a reload applies. A running loader keeps the `Fixed` it
//! started with and the `Live` last applied; there is no third copy to read
//! by mistake, and a reload is a comparison of two `Fixed` values.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::acl::{Acl, AclAction};
use super::backends::ForwardingSection;
use super::tcp::{TcpFixed, TcpLimits};
use super::types::{DataplaneSection, File, XdpSection, XskSection};
use super::{
    AnswerSpec, BackendConfig, ControlSection, FailAction, MetricsSection, PoolConfig,
    QueueSelection, RuleConfig, SupervisorSection, TxAnswers, XdpMode, XskBindMode, rules,
};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub fixed: Fixed,
    pub live: Live,
}

/// What a running instance cannot change: a reload that changes any of it
/// is refused with the keys named.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixed {
    pub instance: String,
    pub runtime_dir: PathBuf,
    pub xdp: XdpFixed,
    pub xsk: XskFixed,
    pub dataplane: DataplaneFixed,
    pub control: ControlSection,
    pub metrics: Option<MetricsSection>,
    pub forwarding: ForwardingFixed,
    pub tcp: TcpFixed,
    /// Entries of the shared packet cache (0: none).
    pub cache_slots: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct XdpFixed {
    pub interface: String,
    pub mode: XdpMode,
    pub pin_root: PathBuf,
}

/// The UMEM geometry and socket mode.
#[derive(Debug, Clone, PartialEq)]
pub struct XskFixed {
    pub frames: u32,
    pub frame_size: u32,
    pub bind_mode: XskBindMode,
}

/// Who the dataplanes are.
#[derive(Debug, Clone, PartialEq)]
pub struct DataplaneFixed {
    pub user: String,
    pub group: Option<String>,
    pub keep_ipc_lock: bool,
    pub binary: Option<PathBuf>,
}

/// What forwarding reserves at start: ports, table size.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardingFixed {
    /// Backends are configured (forwarding on).
    pub enabled: bool,
    pub port_base: u16,
    pub ports: u32,
    pub backend_sockets: u32,
    pub max_in_flight: u32,
}

/// What a reload applies while running.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub xdp: XdpLive,
    pub xsk: XskLive,
    pub dataplane: DataplaneLive,
    pub supervisor: SupervisorSection,
    pub listen: Vec<SocketAddr>,
    pub rule: Vec<RuleConfig>,
    pub backend: Vec<BackendConfig>,
    pub pool: Vec<PoolConfig>,
    pub forwarding: ForwardingLive,
    pub acl: Acl,
    pub tcp: TcpLimits,
    pub abuse: super::abuse::Abuse,
    pub cache: super::cache::CacheTtls,
}

#[derive(Debug, Clone, PartialEq)]
pub struct XdpLive {
    pub queues: QueueSelection,
    pub redirect: bool,
    pub tx_answers: TxAnswers,
}

/// Loop tuning; the last two apply as dataplanes (re)start.
#[derive(Debug, Clone, PartialEq)]
pub struct XskLive {
    pub verify_checksums: bool,
    pub batch_size: u32,
    pub idle_nap_us: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataplaneLive {
    pub edns_udp_size: u16,
    /// Applies as dataplanes (re)start.
    pub stats_interval_ms: u32,
    /// Applies as dataplanes (re)start.
    pub cpus: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForwardingLive {
    pub timeout_ms: u32,
    pub timeout_action: FailAction,
    pub all_down_action: FailAction,
    /// Clamping of forwarded answers' TTLs (0: none).
    pub min_ttl: u32,
    pub max_ttl: u32,
}

impl From<File> for Config {
    fn from(f: File) -> Config {
        let File {
            instance,
            runtime_dir,
            xdp,
            xsk,
            dataplane,
            supervisor,
            control,
            metrics,
            listen,
            rule,
            backend,
            pool,
            forwarding,
            acl,
            tcp,
            limits,
            block,
            dynamic_block,
            cache,
        } = f;
        // Validated before the conversion.
        let abuse =
            super::abuse::compile(limits.as_ref(), &block, &dynamic_block).unwrap_or_default();
        let (tcp_fixed, tcp_limits) = tcp.split();
        let XdpSection {
            interface,
            queues,
            mode,
            pin_root,
            redirect,
            tx_answers,
        } = xdp;
        let XskSection {
            frames,
            frame_size,
            bind_mode,
            batch_size,
            verify_checksums,
            idle_nap_us,
        } = xsk;
        let DataplaneSection {
            user,
            group,
            keep_ipc_lock,
            binary,
            stats_interval_ms,
            edns_udp_size,
            cpus,
        } = dataplane;
        let ForwardingSection {
            timeout_ms,
            timeout_action,
            all_down_action,
            port_base,
            ports,
            backend_sockets,
            max_in_flight,
            min_ttl,
            max_ttl,
        } = forwarding;
        // Validated before the conversion.
        let acl = acl.compile().unwrap_or(Acl {
            allow: Vec::new(),
            action: AclAction::Drop,
        });
        Config {
            fixed: Fixed {
                instance,
                runtime_dir,
                xdp: XdpFixed {
                    interface,
                    mode,
                    pin_root,
                },
                xsk: XskFixed {
                    frames,
                    frame_size,
                    bind_mode,
                },
                dataplane: DataplaneFixed {
                    user,
                    group,
                    keep_ipc_lock,
                    binary,
                },
                control,
                metrics,
                forwarding: ForwardingFixed {
                    enabled: !backend.is_empty(),
                    port_base,
                    ports,
                    backend_sockets,
                    max_in_flight,
                },
                tcp: tcp_fixed,
                cache_slots: cache.slots(),
            },
            live: Live {
                xdp: XdpLive {
                    queues,
                    redirect,
                    tx_answers,
                },
                xsk: XskLive {
                    verify_checksums,
                    batch_size,
                    idle_nap_us,
                },
                dataplane: DataplaneLive {
                    edns_udp_size,
                    stats_interval_ms,
                    cpus,
                },
                supervisor,
                listen: listen.into_iter().map(|l| l.address).collect(),
                rule,
                backend,
                pool,
                forwarding: ForwardingLive {
                    timeout_ms,
                    timeout_action,
                    all_down_action,
                    min_ttl,
                    max_ttl,
                },
                acl,
                tcp: tcp_limits,
                abuse,
                cache: cache.ttls(),
            },
        }
    }
}

impl Fixed {
    /// Bytes of UMEM one dataplane registers.
    pub fn umem_bytes_per_queue(&self) -> u64 {
        u64::from(self.xsk.frames) * u64::from(self.xsk.frame_size)
    }

    /// The keys (as written in the file) whose values differ from `other`'s.
    /// Every field is named below, so a new fixed setting cannot be
    /// forgotten here: it does not compile until it is compared.
    pub fn differences(&self, other: &Fixed) -> Vec<&'static str> {
        let Fixed {
            instance,
            runtime_dir,
            xdp:
                XdpFixed {
                    interface,
                    mode,
                    pin_root,
                },
            xsk:
                XskFixed {
                    frames,
                    frame_size,
                    bind_mode,
                },
            dataplane:
                DataplaneFixed {
                    user,
                    group,
                    keep_ipc_lock,
                    binary,
                },
            control,
            metrics,
            forwarding:
                ForwardingFixed {
                    enabled,
                    port_base,
                    ports,
                    backend_sockets,
                    max_in_flight,
                },
            tcp:
                TcpFixed {
                    workers,
                    user: tcp_user,
                    group: tcp_group,
                    binary: tcp_binary,
                },
            cache_slots,
        } = self;
        let o = other;
        let (of, ox, ok, od) = (&o.forwarding, &o.xdp, &o.xsk, &o.dataplane);
        [
            (instance != &o.instance, "instance"),
            (cache_slots != &o.cache_slots, "cache.entries"),
            (runtime_dir != &o.runtime_dir, "runtime_dir"),
            (interface != &ox.interface, "xdp.interface"),
            (mode != &ox.mode, "xdp.mode"),
            (pin_root != &ox.pin_root, "xdp.pin_root"),
            (frames != &ok.frames, "xsk.frames"),
            (frame_size != &ok.frame_size, "xsk.frame_size"),
            (bind_mode != &ok.bind_mode, "xsk.bind_mode"),
            (user != &od.user, "dataplane.user"),
            (group != &od.group, "dataplane.group"),
            (
                keep_ipc_lock != &od.keep_ipc_lock,
                "dataplane.keep_ipc_lock",
            ),
            (binary != &od.binary, "dataplane.binary"),
            (control != &o.control, "control"),
            (metrics != &o.metrics, "metrics"),
            (
                enabled != &of.enabled,
                "backend (turning forwarding on or off)",
            ),
            (port_base != &of.port_base, "forwarding.port_base"),
            (ports != &of.ports, "forwarding.ports"),
            (
                backend_sockets != &of.backend_sockets,
                "forwarding.backend_sockets",
            ),
            (
                max_in_flight != &of.max_in_flight,
                "forwarding.max_in_flight",
            ),
            (workers != &o.tcp.workers, "tcp.workers"),
            (tcp_user != &o.tcp.user, "tcp.user"),
            (tcp_group != &o.tcp.group, "tcp.group"),
            (tcp_binary != &o.tcp.binary, "tcp.binary"),
        ]
        .into_iter()
        .filter_map(|(differs, key)| differs.then_some(key))
        .collect()
    }
}

impl Live {
    /// The destinations the XDP program redirects to AF_XDP: the listen
    /// addresses, or none when `xdp.redirect` is off.
    pub fn redirected(&self) -> Vec<SocketAddr> {
        if self.xdp.redirect {
            self.listen.clone()
        } else {
            Vec::new()
        }
    }

    /// The rule list the dataplanes evaluate, compiled to wire form.
    pub fn answer_spec(&self) -> AnswerSpec {
        let mut spec = rules::compile(
            &self.rule,
            self.dataplane.edns_udp_size,
            !self.backend.is_empty(),
            &self.acl,
        );
        spec.tally = self.abuse.tally();
        spec.min_ttl = self.forwarding.min_ttl;
        spec.max_ttl = self.forwarding.max_ttl;
        spec
    }
}
