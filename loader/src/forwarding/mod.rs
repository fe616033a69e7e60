//! Backends: resolved at start and on reloads (source address, pools), kept
//! alive by health checks and next-hop (MAC) resolution ([`health`], whose
//! tasks report to the run loop), and handed to dataplanes with the
//! resources forwarding reserves for the instance's life
//! ([`ForwardResources`]: the shared in-flight table and the forwarding
//! port range, held by deaf sockets so nothing else is given those ports).

pub mod health;

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use xdpdns_common::config::{DEFAULT_POOL, Live};
use xdpdns_common::inflight;
use xdpdns_common::ipc::{BackendLive, BackendSpec, CacheSpec, ForwardSpec, PoolSpec};

use crate::bpf::{ReplySteer, SteerCounters};
use crate::plan::Plan;
use crate::sockets;
use crate::system::netlink;

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
        source: sockets::SocketError,
    },
    #[error("cannot create the in-flight table: {0}")]
    Table(nix::Error),
    #[error("cannot create the packet cache ({bytes} bytes): {source}")]
    Cache { bytes: u64, source: std::io::Error },
    #[error(
        "backend {address}: the running instance forwards over {have} only (its forwarding ports are reserved for that): restart xdpdns to add another address family"
    )]
    NewFamily { address: SocketAddr, have: String },
    #[error("backend socket: {0}")]
    Socket(sockets::SocketError),
    #[error("cannot duplicate a forwarding descriptor: {0}")]
    Dup(std::io::Error),
}

/// What forwarding reserves for the instance's life: the in-flight table
/// (a sealed memfd) and the forwarding port range, every port held on the
/// wildcard address by a deaf socket per address family in use (the
/// dataplanes send from those ports over AF_XDP; the kernel must neither
/// give them to anyone else nor queue what arrives on them). Shared,
/// read-only, with the supervisors.
pub struct ForwardResources {
    /// The families the reservations cover (false = IPv4).
    families: Vec<bool>,
    table: OwnedFd,
    /// The shared packet cache, if `[cache]` has one.
    cache: Option<OwnedFd>,
    /// Held, never read.
    _reserved: Vec<OwnedFd>,
    /// Steers socket backends' replies to each dataplane's receiving
    /// sockets; `None` if the kernel refused the program (replies then stay
    /// on the pool sockets, connected).
    steer: Option<RefCell<ReplySteer>>,
}

impl ForwardResources {
    /// Forwarding's descriptors for dataplane `queue`, in the order the
    /// dataplane splits them: the table (with Init only), then
    /// `backend_sockets` connected sockets per backend of `spec`, then a
    /// receiving socket per family of `spec.steered`, where the pool
    /// sockets' replies are steered from now on.
    pub fn fds_for(
        &self,
        spec: &ForwardSpec,
        with_table: bool,
        queue: u32,
    ) -> Result<Vec<OwnedFd>, ForwardError> {
        let mut out = Vec::with_capacity(spec.descriptors(with_table));
        if with_table {
            out.push(
                self.table
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(ForwardError::Dup)?,
            );
            if let (Some(fd), Some(_)) = (&self.cache, &spec.cache) {
                out.push(fd.as_fd().try_clone_to_owned().map_err(ForwardError::Dup)?);
            }
        }
        let pool_start = out.len();
        for b in &spec.backends {
            // A steered pool socket is not connected: the kernel looks up
            // connected sockets before it runs the steering program. The
            // program then plays the connection's part (only the peer's
            // datagrams, to its port) and the dataplane sends with sendto.
            let connect = b.xsk || !spec.steered.contains(&b.address.is_ipv6());
            for _ in 0..spec.backend_sockets {
                out.push(backend_socket(b, connect)?);
            }
        }
        let per = spec.backend_sockets as usize;
        for &v6 in &spec.steered {
            let rx = receiver(v6)?;
            // Socket backends of this family: their pool sockets.
            let pool: Vec<(&OwnedFd, SocketAddr)> = spec
                .backends
                .iter()
                .enumerate()
                .filter(|(_, b)| !b.xsk && b.address.is_ipv6() == v6)
                .flat_map(|(i, b)| {
                    out[pool_start + i * per..pool_start + (i + 1) * per]
                        .iter()
                        .map(|fd| (fd, b.address))
                })
                .collect();
            let registered = match &self.steer {
                Some(steer) => steer.borrow_mut().register(queue, v6, &rx, &pool),
                None => Ok(()),
            };
            if let Err(e) = registered {
                // The replies stay on the pool sockets, which the dataplane
                // reads as well: connected, so that the kernel takes only
                // the backend's (the dataplane's sendto still works).
                warn!(queue, error = %e, "socket backends' replies not steered");
                for (fd, peer) in &pool {
                    socket2::SockRef::from(*fd)
                        .connect(&(*peer).into())
                        .map_err(|source| {
                            ForwardError::Socket(sockets::SocketError {
                                what: "connect",
                                addr: *peer,
                                source,
                            })
                        })?;
                }
            }
            out.push(rx);
        }
        Ok(out)
    }

    /// The families whose socket backends' replies are steered.
    fn steered(&self, backends: &[BackendSpec]) -> Vec<bool> {
        if self.steer.is_none() {
            return Vec::new();
        }
        let mut v: Vec<bool> = backends
            .iter()
            .filter(|b| !b.xsk)
            .map(|b| b.address.is_ipv6())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// What the steering program did so far (`None` without it).
    pub fn steer_counters(&self) -> Option<SteerCounters> {
        let s = self.steer.as_ref()?;
        match s.borrow().counters() {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "cannot read the steering counters");
                None
            }
        }
    }
}

/// Where the steering program sends a dataplane's socket replies: an
/// unconnected UDP socket on the loopback address (free-bind: lo may be down
/// in a fresh namespace; a steered reply keeps its own addresses), reporting
/// each datagram's original destination.
fn receiver(v6: bool) -> Result<OwnedFd, ForwardError> {
    let at: SocketAddr = if v6 {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    } else {
        (std::net::Ipv4Addr::LOCALHOST, 0).into()
    };
    let opts = sockets::Udp {
        freebind: true,
        big_rcvbuf: true,
        orig_dst: true,
        ..sockets::Udp::default()
    };
    sockets::udp(at, opts).map_err(ForwardError::Socket)
}

/// Backends and their state, owned by the run loop.
pub struct Forwarding {
    spec: ForwardSpec,
    resources: Rc<ForwardResources>,
    /// Health and next-hop MAC of every backend, in spec order.
    live: Vec<BackendLive>,
    /// One health-check task per backend.
    health: Vec<JoinHandle<()>>,
    /// Bumped whenever the backend list changes: reports of older tasks
    /// (already in the channel) are ignored.
    generation: u64,
}

/// A reloaded [`Forwarding`], and where each new backend was before
/// (`map[new] = Some(old)`).
pub struct Reloaded {
    pub forwarding: Forwarding,
    pub map: Vec<Option<usize>>,
}

/// Resolves backends and reserves what forwarding needs; `None` without backends.
pub fn prepare(plan: &Plan, live: &Live) -> Result<Option<Forwarding>, ForwardError> {
    if live.backend.is_empty() {
        return Ok(None);
    }
    let (backends, pools) = resolve(live, &[])?;
    let f = &plan.fixed.forwarding;
    let lf = &live.forwarding;
    let regions = plan.interface.queues;
    let table = sealed_region(
        c"xdpdns-inflight",
        inflight::table_bytes(regions, f.max_in_flight),
    )
    .map_err(ForwardError::Table)?;
    let slots = plan.fixed.cache_slots;
    let cache = if slots > 0 {
        let bytes = xdpdns_common::cache::table_bytes(slots);
        let fd = sealed_region(c"xdpdns-cache", bytes).map_err(|e| ForwardError::Cache {
            bytes,
            source: e.into(),
        })?;
        let key = cache_key().map_err(|source| ForwardError::Cache { bytes, source })?;
        Some((
            fd,
            CacheSpec {
                slots,
                ttls: live.cache,
                key,
            },
        ))
    } else {
        None
    };
    let (cache_fd, cache_spec) = match cache {
        Some((fd, spec)) => (Some(fd), Some(spec)),
        None => (None, None),
    };
    let families = families(&backends);
    let mut reserved = Vec::with_capacity(f.ports as usize * families.len());
    for v6 in &families {
        for i in 0..f.ports {
            // Validation keeps port_base + ports within 65536.
            reserved.push(reserve(f.port_base + i as u16, *v6)?);
        }
    }
    let live_state = initial_live(live);
    // Whatever the backends are now: a reload may add socket backends.
    let steer = match ReplySteer::attach(regions) {
        Ok(s) => Some(RefCell::new(s)),
        Err(e) => {
            warn!(error = %e, "socket backends' replies are read from every pool socket (no steering)");
            None
        }
    };
    let resources = ForwardResources {
        families,
        table,
        cache: cache_fd,
        _reserved: reserved,
        steer,
    };
    Ok(Some(Forwarding {
        spec: ForwardSpec {
            steered: resources.steered(&backends),
            backends,
            pools,
            default_pool: 0,
            timeout_ms: lf.timeout_ms,
            timeout_action: lf.timeout_action,
            all_down_action: lf.all_down_action,
            port_base: f.port_base,
            ports: f.ports,
            backend_sockets: f.backend_sockets,
            frame_size: plan.fixed.xsk.frame_size,
            mtu: plan.interface.link.mtu,
            max_in_flight: f.max_in_flight,
            regions,
            local_mac: plan.interface.link.mac.unwrap_or_default(),
            live: live_state.clone(),
            cache: cache_spec,
        },
        resources: Rc::new(resources),
        live: live_state,
        health: Vec::new(),
        generation: 0,
    }))
}

/// A memfd of `bytes` zeroes, sealed against resizing: what every
/// dataplane maps (shm::SharedRegion refuses it otherwise).
fn sealed_region(name: &std::ffi::CStr, bytes: u64) -> Result<OwnedFd, nix::Error> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    nix::unistd::ftruncate(&fd, bytes as i64)?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// The packet cache's hash keys: from the kernel's random source, per
/// instance (every dataplane must find the others' entries).
fn cache_key() -> std::io::Result<(u64, u64)> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let (k0, k1) = b.split_at(8);
    Ok((
        u64::from_le_bytes(k0.try_into().expect("8 bytes")),
        u64::from_le_bytes(k1.try_into().expect("8 bytes")),
    ))
}

/// Health before the first check: up, with the configured MAC if any.
fn initial_live(c: &Live) -> Vec<BackendLive> {
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
    c: &Live,
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
        cache: c
            .pool
            .iter()
            .find(|p| p.name == DEFAULT_POOL)
            .is_none_or(|p| p.cache),
    }];
    for p in c.pool.iter().filter(|p| p.name != DEFAULT_POOL) {
        pools.push(PoolSpec {
            name: p.name.clone(),
            policy: p.policy,
            members: Vec::new(),
            cache: p.cache,
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

/// Holds a forwarding port for one family on every address, exclusively.
fn reserve(port: u16, v6: bool) -> Result<OwnedFd, ForwardError> {
    let any: SocketAddr = if v6 {
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    let opts = sockets::Udp {
        deaf: true,
        ..sockets::Udp::default()
    };
    sockets::udp(any, opts).map_err(|e| ForwardError::PortTaken {
        port,
        family: if v6 { "IPv6" } else { "IPv4" },
        source: e,
    })
}

impl Forwarding {
    /// Our addresses toward AF_XDP backends: replies to them on a
    /// forwarding port are redirected.
    pub fn xsk_sources(&self) -> Vec<IpAddr> {
        let mut sources: Vec<IpAddr> = self
            .spec
            .backends
            .iter()
            .filter(|b| b.xsk)
            .map(|b| b.source)
            .collect();
        sources.sort();
        sources.dedup();
        sources
    }

    /// The AF_XDP backends, the only sources a redirected reply may have,
    /// each with our address its queries leave from.
    pub fn xsk_backends(&self) -> Vec<(SocketAddr, IpAddr)> {
        let mut out: Vec<(SocketAddr, IpAddr)> = self
            .spec
            .backends
            .iter()
            .filter(|b| b.xsk)
            .map(|b| (b.address, b.source))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The spec without health (see [`Forwarding::live`]).
    pub fn spec(&self) -> &ForwardSpec {
        &self.spec
    }

    pub fn resources(&self) -> Rc<ForwardResources> {
        self.resources.clone()
    }

    /// Health and MACs now, in backend order.
    pub fn live(&self) -> &[BackendLive] {
        &self.live
    }

    /// Forwarding under a reloaded configuration: new backends, pools and
    /// timeouts over the same in-flight table and forwarding ports.
    /// Backends kept (same address) keep their tag and their health.
    /// Nothing changes until the caller installs the result.
    pub fn respec(&self, c: &Live) -> Result<Reloaded, ForwardError> {
        let (backends, pools) = resolve(c, &self.spec.backends)?;
        let families = &self.resources.families;
        if let Some(b) = backends
            .iter()
            .find(|b| !families.contains(&b.address.is_ipv6()))
        {
            let have: Vec<&str> = families
                .iter()
                .map(|v6| if *v6 { "IPv6" } else { "IPv4" })
                .collect();
            return Err(ForwardError::NewFamily {
                address: b.address,
                have: have.join(" and "),
            });
        }
        // New index -> old index, for counters and health.
        let map: Vec<Option<usize>> = backends
            .iter()
            .map(|b| self.spec.backends.iter().position(|o| o.tag == b.tag))
            .collect();
        let live: Vec<BackendLive> = backends
            .iter()
            .zip(&map)
            .zip(initial_live(c))
            .map(|((b, old), fresh)| {
                match old.map(|o| (&self.spec.backends[o], self.live.get(o))) {
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
            steered: self.resources.steered(&backends),
            backends,
            pools,
            timeout_ms: f.timeout_ms,
            timeout_action: f.timeout_action,
            all_down_action: f.all_down_action,
            live: live.clone(),
            cache: self.spec.cache.map(|s| CacheSpec { ttls: c.cache, ..s }),
            ..self.spec.clone()
        };
        Ok(Reloaded {
            forwarding: Forwarding {
                spec,
                resources: self.resources.clone(),
                live,
                health: Vec::new(),
                generation: self.generation + 1,
            },
            map,
        })
    }

    /// A copy of the packet cache's memfd, for the TCP workers.
    pub fn cache_fd(&self) -> Option<Rc<OwnedFd>> {
        let fd = self.resources.cache.as_ref()?;
        match fd.try_clone() {
            Ok(fd) => Some(Rc::new(fd)),
            Err(e) => {
                error!(error = %e, "cannot duplicate the packet cache for the TCP workers: TCP forwards uncached");
                None
            }
        }
    }

    /// (Re)starts one health-check task per backend of `config` (the live
    /// configuration this forwarding was built from), reporting to `tx`.
    pub fn start_health(
        &mut self,
        config: &Live,
        ifindex: u32,
        tx: &mpsc::UnboundedSender<health::Report>,
    ) {
        self.stop_health();
        for (i, (b, spec)) in config.backend.iter().zip(&self.spec.backends).enumerate() {
            let task = health::Task {
                index: i,
                generation: self.generation,
                backend: b.clone(),
                source: spec.source,
                ifindex,
                up: self.live.get(i).is_none_or(|l| l.up),
                report: tx.clone(),
            };
            self.health.push(tokio::task::spawn_local(task.run()));
        }
    }

    pub fn stop_health(&mut self) {
        for t in self.health.drain(..) {
            t.abort();
        }
    }

    /// Applies a health report; true if the backend's state changed. Logs
    /// when a whole pool goes down or comes back.
    pub fn apply(&mut self, r: &health::Report) -> bool {
        if r.generation != self.generation {
            return false;
        }
        let Some(current) = self.live.get(r.index) else {
            return false;
        };
        if *current == r.live {
            return false;
        }
        let before = self.pools_down();
        self.live[r.index] = r.live;
        let after = self.pools_down();
        for (p, pool) in self.spec.pools.iter().enumerate() {
            if !before.contains(&p) && after.contains(&p) {
                error!(pool = %pool.name, action = ?self.spec.all_down_action, "every backend of the pool is down");
            } else if before.contains(&p) && !after.contains(&p) {
                info!(pool = %pool.name, "the pool has a backend up again");
            }
        }
        true
    }

    /// Indices of pools with members, all down.
    fn pools_down(&self) -> Vec<usize> {
        self.spec
            .pools
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                !p.members.is_empty()
                    && p.members
                        .iter()
                        .all(|m| !self.live.get(usize::from(*m)).is_some_and(|l| l.up))
            })
            .map(|(i, _)| i)
            .collect()
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.stop_health();
    }
}

/// A UDP socket from `source` to the backend, on an ephemeral port:
/// replies come back on it through the kernel stack (the port is not
/// redirected). Connected (`connect`), the kernel accepts them from the
/// backend's address and port only; not connected, the steering program
/// does (see [`ReplySteer`]).
fn backend_socket(b: &BackendSpec, connect: bool) -> Result<OwnedFd, ForwardError> {
    let opts = sockets::Udp {
        freebind: true,
        connect: connect.then_some(b.address),
        ..sockets::Udp::default()
    };
    sockets::udp(SocketAddr::new(b.source, 0), opts).map_err(ForwardError::Socket)
}
