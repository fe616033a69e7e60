//! Backends: resolved once at start (source address, pools), kept alive by
//! health checks and next-hop (MAC) resolution, and handed to dataplanes with
//! the resources forwarding needs: the shared in-flight table and each
//! queue's reserved forwarding port.

mod health;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
use xdpdns_common::config::{Config, DEFAULT_POOL};
use xdpdns_common::inflight;
use xdpdns_common::ipc::{BackendLive, BackendSpec, ForwardSpec, PoolSpec};

use crate::plan::Plan;
use crate::system::netlink;

pub use health::run as run_health;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(
        "backend[{index}] {address}: no route ({source}); set backend.source and make it reachable"
    )]
    NoRoute {
        index: usize,
        address: SocketAddr,
        source: netlink::NetlinkError,
    },
    #[error("backend[{index}] {address}: no source address: set backend.source")]
    NoSource { index: usize, address: SocketAddr },
    #[error(
        "forwarding.port_base: port {port} ({family}) is taken: {source}; choose another port_base"
    )]
    PortTaken {
        port: u16,
        family: &'static str,
        source: nix::Error,
    },
    #[error("cannot create the in-flight table: {0}")]
    Table(nix::Error),
    #[error(
        "backend {address}: the running instance forwards over {have} only (its forwarding ports are reserved for that): restart xdpdns to add another address family"
    )]
    NewFamily { address: SocketAddr, have: String },
    #[error("backend socket for {address}: {source}")]
    Socket {
        address: SocketAddr,
        source: nix::Error,
    },
}

/// Everything forwarding needs, owned by the loader for the instance's life.
pub struct Forwarding {
    spec: ForwardSpec,
    /// The families the port-reserving sockets cover (false = IPv4).
    families: Vec<bool>,
    /// The shared in-flight table (a sealed memfd).
    table: OwnedFd,
    /// Per served queue, its port-reserving sockets (one per family in use).
    ports: BTreeMap<u32, Vec<OwnedFd>>,
}

/// A reloaded [`Forwarding`], and where each new backend was before
/// (`map[new] = Some(old)`).
pub struct Reloaded {
    pub forwarding: Forwarding,
    pub map: Vec<Option<usize>>,
}

/// Resolves backends and reserves what forwarding needs; `None` without backends.
pub fn prepare(plan: &Plan) -> Result<Option<Forwarding>, ForwardError> {
    let c = &plan.config;
    if c.backend.is_empty() {
        return Ok(None);
    }
    let (backends, pools) = resolve(c, &[])?;
    let f = &c.forwarding;
    let regions = plan.interface.queues;
    let table = memfd_create(
        c"xdpdns-inflight",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(ForwardError::Table)?;
    nix::unistd::ftruncate(
        &table,
        inflight::table_bytes(regions, f.max_in_flight) as i64,
    )
    .map_err(ForwardError::Table)?;
    fcntl(
        &table,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(ForwardError::Table)?;
    let families = families(&backends);
    let mut ports = BTreeMap::new();
    for q in &plan.queues {
        let port = f.port_base + *q as u16;
        let mut socks = Vec::new();
        for v6 in &families {
            socks.push(reserve(port, *v6)?);
        }
        ports.insert(*q, socks);
    }
    Ok(Some(Forwarding {
        spec: ForwardSpec {
            backends,
            pools,
            default_pool: 0,
            timeout_ms: f.timeout_ms,
            timeout_action: f.timeout_action,
            all_down_action: f.all_down_action,
            port_base: f.port_base,
            max_in_flight: f.max_in_flight,
            regions,
            local_mac: plan.interface.link.mac.unwrap_or_default(),
            port_sockets: families.len() as u32,
            live: initial_live(c),
        },
        families,
        table,
        ports,
    }))
}

/// Health before the first check: up, with the configured MAC if any.
fn initial_live(c: &Config) -> Vec<BackendLive> {
    c.backend
        .iter()
        .map(|b| BackendLive {
            up: true,
            mac: b.mac,
        })
        .collect()
}

/// The address families (false = IPv4) of `backends`, sorted.
fn families(backends: &[BackendSpec]) -> Vec<bool> {
    let mut v: Vec<bool> = backends.iter().map(|b| b.address.is_ipv6()).collect();
    v.sort();
    v.dedup();
    v
}

/// The backends and pools of `c`, with source addresses resolved. A backend
/// whose address is in `previous` keeps its tag; new ones get unused tags.
fn resolve(
    c: &Config,
    previous: &[BackendSpec],
) -> Result<(Vec<BackendSpec>, Vec<PoolSpec>), ForwardError> {
    let mut pools: Vec<PoolSpec> = vec![PoolSpec {
        name: DEFAULT_POOL.into(),
        policy: c
            .pool
            .iter()
            .find(|p| p.name == DEFAULT_POOL)
            .map(|p| p.policy)
            .unwrap_or_default(),
        members: Vec::new(),
    }];
    for p in c.pool.iter().filter(|p| p.name != DEFAULT_POOL) {
        pools.push(PoolSpec {
            name: p.name.clone(),
            policy: p.policy,
            members: Vec::new(),
        });
    }
    let kept = |a: SocketAddr| previous.iter().find(|p| p.address == a).map(|p| p.tag);
    let mut used: Vec<u16> = c.backend.iter().filter_map(|b| kept(b.address)).collect();
    let mut backends = Vec::new();
    for (i, b) in c.backend.iter().enumerate() {
        let source = match b.source {
            Some(s) => s,
            None => {
                let r =
                    netlink::route_to(b.address.ip()).map_err(|source| ForwardError::NoRoute {
                        index: i,
                        address: b.address,
                        source,
                    })?;
                r.source.ok_or(ForwardError::NoSource {
                    index: i,
                    address: b.address,
                })?
            }
        };
        let tag = match kept(b.address) {
            Some(t) => t,
            None => {
                // Fewer backends than tags: a free one exists.
                let t = (0..=u16::MAX).find(|t| !used.contains(t)).unwrap_or(0);
                used.push(t);
                t
            }
        };
        let pool = pools.iter().position(|p| p.name == b.pool).unwrap_or(0);
        pools[pool].members.push(i as u16);
        backends.push(BackendSpec {
            tag,
            address: b.address,
            source,
            xsk: b.xsk,
            weight: b.weight,
            pool: pool as u16,
        });
    }
    Ok((backends, pools))
}

/// Binds the forwarding port for one family on every address, exclusively.
fn reserve(port: u16, v6: bool) -> Result<OwnedFd, ForwardError> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    let err = |source| ForwardError::PortTaken {
        port,
        family,
        source,
    };
    let fd = socket::socket(
        if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        },
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(err)?;
    let any: SocketAddr = if v6 {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(err)?;
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    let _ = socket::setsockopt(&fd, sockopt::RcvBufForce, &(4usize << 20));
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(any),
    )
    .map_err(err)?;
    Ok(fd)
}

impl Forwarding {
    /// The (address, port) pairs the XDP program must redirect for replies.
    pub fn destinations(&self) -> Vec<SocketAddr> {
        let mut sources: Vec<IpAddr> = self
            .spec
            .backends
            .iter()
            .filter(|b| b.xsk)
            .map(|b| b.source)
            .collect();
        sources.sort();
        sources.dedup();
        let mut out = Vec::new();
        for q in self.ports.keys() {
            for s in &sources {
                out.push(SocketAddr::new(*s, self.spec.port_base + *q as u16));
            }
        }
        out
    }

    pub fn spec(&self) -> &ForwardSpec {
        &self.spec
    }

    /// Forwarding under a reloaded configuration `c`: new backends, pools
    /// and timeouts over the same in-flight table and forwarding ports.
    /// Backends kept (same address) keep their tag and their health.
    pub fn respec(&self, c: &Config, live: &[BackendLive]) -> Result<Reloaded, ForwardError> {
        let (backends, pools) = resolve(c, &self.spec.backends)?;
        if let Some(b) = backends
            .iter()
            .find(|b| !self.families.contains(&b.address.is_ipv6()))
        {
            let have: Vec<&str> = self
                .families
                .iter()
                .map(|v6| if *v6 { "IPv6" } else { "IPv4" })
                .collect();
            return Err(ForwardError::NewFamily {
                address: b.address,
                have: have.join(" and "),
            });
        }
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| {
                ForwardError::Table(nix::Error::from_raw(
                    e.raw_os_error().unwrap_or(libc::EBADF),
                ))
            })
        };
        let mut ports = BTreeMap::new();
        for (q, socks) in &self.ports {
            ports.insert(*q, socks.iter().map(dup).collect::<Result<Vec<_>, _>>()?);
        }
        // New index -> old index, for counters and health.
        let map: Vec<Option<usize>> = backends
            .iter()
            .map(|b| self.spec.backends.iter().position(|o| o.tag == b.tag))
            .collect();
        let live = backends
            .iter()
            .zip(&map)
            .zip(initial_live(c))
            .map(|((b, old), fresh)| {
                match old.map(|o| (&self.spec.backends[o], live.get(o))) {
                    // A kept backend keeps its health, and its MAC unless
                    // the configuration now names one.
                    Some((ob, Some(l))) if ob.xsk == b.xsk => BackendLive {
                        up: l.up,
                        mac: fresh.mac.or(l.mac),
                    },
                    _ => fresh,
                }
            })
            .collect();
        let f = &c.forwarding;
        let spec = ForwardSpec {
            backends,
            pools,
            timeout_ms: f.timeout_ms,
            timeout_action: f.timeout_action,
            all_down_action: f.all_down_action,
            live,
            ..self.spec.clone()
        };
        Ok(Reloaded {
            forwarding: Forwarding {
                spec,
                families: self.families.clone(),
                table: dup(&self.table)?,
                ports,
            },
            map,
        })
    }

    /// The spec for a dataplane starting now, with current health and MACs.
    pub fn spec_with(&self, live: &[BackendLive]) -> ForwardSpec {
        let mut s = self.spec.clone();
        s.live = live.to_vec();
        s
    }

    /// Descriptors for one dataplane, in the order `ForwardFds::split`
    /// expects: the table, the queue's port sockets, fresh backend sockets.
    pub fn fds_for(&self, queue: u32) -> Result<Vec<OwnedFd>, ForwardError> {
        let dup = |fd: &OwnedFd| {
            fd.as_fd().try_clone_to_owned().map_err(|e| {
                ForwardError::Table(nix::Error::from_raw(
                    e.raw_os_error().unwrap_or(libc::EBADF),
                ))
            })
        };
        let mut out = vec![dup(&self.table)?];
        for s in self.ports.get(&queue).into_iter().flatten() {
            out.push(dup(s)?);
        }
        for b in &self.spec.backends {
            out.push(backend_socket(b)?);
        }
        Ok(out)
    }
}

/// A UDP socket from `source` connected to the backend: replies come back
/// on it through the kernel stack (its ephemeral port is not redirected).
fn backend_socket(b: &BackendSpec) -> Result<OwnedFd, ForwardError> {
    let err = |source| ForwardError::Socket {
        address: b.address,
        source,
    };
    let fd = socket::socket(
        if b.address.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        },
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(err)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let _ = socket::setsockopt(&fd, sockopt::IpFreebind, &true);
    socket::bind(raw, &SockaddrStorage::from(SocketAddr::new(b.source, 0))).map_err(err)?;
    socket::connect(raw, &SockaddrStorage::from(b.address)).map_err(err)?;
    Ok(fd)
}
