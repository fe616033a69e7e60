//! Carrying out a forward verdict over UDP, and relaying the replies.
//!
//! Every forwarded query gets a slot in the shared in-flight table
//! (`shm::inflight`) and leaves with a **key** nobody off-path can predict
//! ([`keys`]): over AF_XDP, a source port drawn per query from the
//! instance's forwarding range (shared by all queues; the XDP program
//! redirects replies to the range) and a random DNS ID; over a socket (socket
//! backends, and queries that came over the kernel path), one of the
//! backend's sockets drawn per query — each with its own kernel-chosen
//! port — and a random ID. A reply is claimed with its key on whatever queue
//! or socket it arrives, checked against the backend, the question and QR,
//! and relayed to the client the way the client came. Queries over AF_XDP
//! ask the backend for no larger a reply than a frame and the backend leg's
//! MTU carry (larger answers come back truncated; the client retries over
//! TCP): nothing needs IP fragments on the way back. A query that goes
//! unanswered for several of its backend's latencies ([`latency`]) is
//! presumed lost, and its slot may go to a new query; younger ones keep
//! theirs, and past the queue's limit new queries are dropped.

pub mod keys;
pub mod latency;
pub mod trust;

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use xdpdns_common::config::FailAction;
use xdpdns_common::inflight::MAX_QUESTION;
use xdpdns_common::ipc::ForwardSpec;
use xdpdns_common::maps::XDP_PACKET_HEADROOM;
use xdpdns_common::stats::DataplaneCounters;

use crate::dns::{self, Edns, HEADER_LEN, Query, TtlClamp};
use crate::frame::{self, ETH_HLEN, Headers, IPV4_HLEN, IPV6_HLEN, Parsed, UDP_HLEN, VLAN_HLEN};
use crate::mmsg::{Received, RecvBatch};
use crate::pipeline::backends::Backends;
use crate::poller::{Poller, Token};
use crate::shm::ShmError;
use crate::shm::cache::{Cache, Variant};
use crate::shm::inflight::{self, Allocator, ClaimError, Claimed, Client, Entry, Swept, Table};
use crate::xsk::Fate;
use keys::{Draws, below};
use latency::Latency;
use trust::Listeners;

/// Where answers that are not a frame in hand go.
pub trait Emit {
    /// Sends `payload` to `to` from the kernel-path socket bound to `local`.
    fn kernel(&mut self, local: SocketAddr, to: SocketAddr, payload: &[u8]) -> bool;
    /// Builds an AF_XDP frame with headers `h` around `payload`; false if
    /// it cannot (no free frame, or not possible right now).
    fn frame(&mut self, h: &Headers, payload: &[u8]) -> bool;
    /// How many frames [`Emit::frame`] has free to build in now. Replies
    /// waiting on a socket stay there while it has none: read, they would
    /// take the slow kernel path (or be lost).
    fn frames_free(&self) -> usize {
        usize::MAX
    }
}

/// The descriptors that come with a [`ForwardSpec`].
pub struct ForwardFds {
    /// The in-flight table: with Init only (it lives as long as the instance).
    pub table: Option<OwnedFd>,
    /// The packet cache, if the spec has one: with Init only, as the table.
    pub cache: Option<OwnedFd>,
    /// Per backend, its sockets (connected unless their family is steered).
    pub backends: Vec<Vec<OwnedFd>>,
    /// A receiving socket per family of the spec's `steered`.
    pub steered: Vec<OwnedFd>,
}

impl ForwardFds {
    /// Splits the descriptors that came with Init (`with_table`) or
    /// Reconfigure: the kernel-path sockets first, then the forwarding ones.
    /// `None` if the count is wrong.
    pub fn split(
        mut fds: Vec<OwnedFd>,
        kernel: usize,
        spec: Option<&ForwardSpec>,
        with_table: bool,
    ) -> Option<(Vec<OwnedFd>, Option<ForwardFds>)> {
        let need = kernel + spec.map_or(0, |s| s.descriptors(with_table));
        if fds.len() != need {
            return None;
        }
        let rest = fds.split_off(kernel);
        let Some(s) = spec else {
            return Some((fds, None));
        };
        let mut it = rest.into_iter();
        let table = if with_table { Some(it.next()?) } else { None };
        let cache = if with_table && s.cache.is_some() {
            Some(it.next()?)
        } else {
            None
        };
        let per = s.backend_sockets as usize;
        let backends = (0..s.backends.len())
            .map(|_| it.by_ref().take(per).collect())
            .collect();
        let steered = it.collect();
        Some((
            fds,
            Some(ForwardFds {
                table,
                cache,
                backends,
                steered,
            }),
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the in-flight table: {0}")]
    Table(#[from] ShmError),
    #[error("the loader sent no in-flight table")]
    NoTable,
    #[error("the packet cache: {0}")]
    Cache(ShmError),
    #[error("{want} sockets per backend expected")]
    Sockets { want: u32 },
    #[error("{want} receiving sockets expected")]
    Receivers { want: usize },
    #[error("forwarding socket: {0}")]
    Socket(#[from] io::Error),
}

/// What carrying out a forward verdict for a frame came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Transmit the chunk's bytes `[head, head + len)`: the query, re-addressed.
    Frame { head: usize, len: usize },
    /// Sent on a socket; the chunk is free.
    Socket,
    /// Not forwarded: answer per this action.
    Failed(FailAction),
}

/// One backend's sockets and the local port of each.
struct Pool {
    socks: Vec<UdpSocket>,
    ports: Vec<u16>,
    /// Where to send: the sockets of a steered family are not connected
    /// (see `ForwardSpec::steered`); `None` when they are.
    peer: Option<SocketAddr>,
}

/// Datagrams read from one backend socket per call (one recvmmsg), and the
/// largest accepted.
const RECV_PER_CALL: usize = 32;
const RECV_BUF: usize = 16 * 1024;
/// Datagrams read from a receiving socket per call: it takes every socket
/// backend's replies of this dataplane.
const STEERED_PER_CALL: usize = 64;

pub struct Forwarder {
    queue: u32,
    spec: ForwardSpec,
    table: Table,
    alloc: Allocator,
    draws: Draws,
    /// The key the next query over AF_XDP leaves with, drawn one query
    /// ahead so that its index cell is already fetched when it is taken
    /// (new with every build: a reconfiguration may change the ports).
    ahead: Option<u32>,
    pools: Vec<Pool>,
    /// Backend addresses as frames carry them, for matching replies.
    backend_keys: Vec<(bool, [u8; 16], u16)>,
    /// Per slot of our region, the backend (tag) of the query we put there
    /// and have not seen done yet: a sweep that finds the slot free learns
    /// the query is done, wherever its reply was claimed (replies we claim
    /// ourselves mark it at once, and the sweep skips their slots).
    mine: Vec<Mine>,
    /// A query was forwarded since the last sweep, or the last sweep left
    /// some of ours in flight: sweep at the normal pace.
    busy: bool,
    /// Sweeps so far (every [`FULL_SWEEP_EVERY`]th, and every one while
    /// not busy, walks the whole region).
    sweeps: u32,
    /// The slots a partial sweep visits (kept for its capacity).
    sweep_list: Vec<u32>,
    latency: Latency,
    /// Our listen addresses: what an entry must name to be answered.
    listeners: Listeners,
    /// Where replies from backend sockets are read.
    batch: RecvBatch,
    /// The receiving sockets (one per family of `spec.steered`), where the
    /// loader steers the replies arriving on our pool sockets.
    receivers: Vec<UdpSocket>,
    /// Where replies from the receiving sockets are read: with each one's
    /// source and the destination (pool port) it was sent to.
    steered_batch: RecvBatch,
    /// The shared packet cache, where backends' answers go.
    cache: Option<Arc<Cache>>,
    /// CLOCK_MONOTONIC as read once per batch of the worker's loop (see
    /// [`Forwarder::new_batch`]); `None` until the batch needs it.
    clock: std::cell::Cell<Option<u64>>,
}

#[cfg(feature = "test-hooks")]
impl Forwarder {
    /// This queue and the shared table, for the hostile-sibling hook.
    pub fn shared(&self) -> (u32, &Table) {
        (self.queue, &self.table)
    }
}

/// What we know of a slot of our region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mine {
    /// No query of ours we have not seen done.
    Free,
    /// Our query to backend `tag`, not seen answered.
    InFlight(u16),
    /// Our query to backend `tag`, whose reply we claimed; the next sweep
    /// settles the backend's accounting without reading the slot.
    Answered(u16),
}

impl Mine {
    fn tag(self) -> Option<u16> {
        match self {
            Mine::Free => None,
            Mine::InFlight(t) | Mine::Answered(t) => Some(t),
        }
    }

    /// The tag, leaving the slot free.
    fn take(&mut self) -> Option<u16> {
        std::mem::replace(self, Mine::Free).tag()
    }
}

/// Timeout answers one sweep may emit (a sweep runs every 10 ms); expired
/// queries beyond are freed without an answer, counted.
const SWEEP_ANSWERS: usize = 256;

/// While busy, a sweep visits only the slots of our own queries; one in
/// this many walks the whole region, for entries we did not write (a
/// predecessor's, after a restart, or a sibling's) — so those are answered
/// at most ~160 ms after their deadline. A region is 4,096 slots of 384
/// bytes by default (1.5 MiB): a full walk every 10 ms read ~400 k cache
/// lines a second, mostly misses.
const FULL_SWEEP_EVERY: u32 = 16;

/// What a forwarder keeps across a reconfiguration.
struct Kept {
    queue: u32,
    table: Table,
    alloc: Allocator,
    draws: Draws,
    mine: Vec<Mine>,
    latency: Latency,
}

fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            b
        }
        IpAddr::V6(v) => v.octets(),
    }
}

fn sockaddr(v6: bool, ip: &[u8; 16], port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::from((*ip, port))
    } else {
        SocketAddr::from(([ip[0], ip[1], ip[2], ip[3]], port))
    }
}

pub use crate::shm::monotonic_ns;

/// Non-blocking UDP sockets from descriptors the loader bound, with the
/// local port of each.
fn pool(fds: Vec<OwnedFd>) -> io::Result<Pool> {
    let mut p = Pool {
        socks: Vec::with_capacity(fds.len()),
        ports: Vec::with_capacity(fds.len()),
        peer: None,
    };
    for fd in fds {
        let s = UdpSocket::from(fd);
        // fcntl, not set_nonblocking's ioctl: this also runs under the
        // seccomp filter (a reconfiguration).
        let fl = nix::fcntl::fcntl(&s, nix::fcntl::FcntlArg::F_GETFL)?;
        let fl = nix::fcntl::OFlag::from_bits_retain(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&s, nix::fcntl::FcntlArg::F_SETFL(fl))?;
        p.ports.push(s.local_addr()?.port());
        p.socks.push(s);
    }
    Ok(p)
}

/// The largest UDP payload that leaves or arrives on an AF_XDP leg of
/// family `v6` in one frame: what the interface MTU and a UMEM frame (after
/// the kernel's headroom, with room for a VLAN tag) both hold.
pub fn wire_room(spec: &ForwardSpec, v6: bool) -> usize {
    let ip = if v6 { IPV6_HLEN } else { IPV4_HLEN };
    let frame = (spec.frame_size.saturating_sub(XDP_PACKET_HEADROOM) as usize)
        .saturating_sub(ETH_HLEN + VLAN_HLEN + ip + UDP_HLEN);
    let mtu = (spec.mtu as usize).saturating_sub(ip + UDP_HLEN);
    frame.min(mtu)
}

impl Forwarder {
    /// Sets up forwarding at start: maps the in-flight table.
    pub fn open(queue: u32, spec: ForwardSpec, fds: ForwardFds) -> Result<Forwarder, ForwardError> {
        let fd = fds.table.as_ref().ok_or(ForwardError::NoTable)?;
        let table = Table::open(fd.as_fd(), spec.regions, spec.max_in_flight)?;
        let alloc = table.allocator(queue);
        let cache = match (&spec.cache, &fds.cache) {
            (Some(s), Some(fd)) => Some(Arc::new(
                Cache::open(fd.as_fd(), s.slots, s.key).map_err(ForwardError::Cache)?,
            )),
            _ => None,
        };
        let mut f = Forwarder::with_table(queue, spec, fds, table, alloc)?;
        f.cache = cache;
        Ok(f)
    }

    /// Puts backends' answers into `cache` (tests and benchmarks map an
    /// anonymous one).
    pub fn set_cache(&mut self, cache: Option<Arc<Cache>>) {
        self.cache = cache;
    }

    /// The shared packet cache, for the pipeline's lookups.
    pub fn cache(&self) -> Option<Arc<Cache>> {
        self.cache.clone()
    }

    /// Forwarding with a table already mapped (tests and benchmarks use an
    /// anonymous one).
    pub fn with_table(
        queue: u32,
        spec: ForwardSpec,
        fds: ForwardFds,
        table: Table,
        alloc: Allocator,
    ) -> Result<Forwarder, ForwardError> {
        let kept = Kept {
            queue,
            mine: vec![Mine::Free; table.per_queue() as usize],
            table,
            alloc,
            draws: Draws::new()?,
            latency: Latency::default(),
        };
        Forwarder::build(kept, spec, fds)
    }

    fn build(kept: Kept, spec: ForwardSpec, fds: ForwardFds) -> Result<Forwarder, ForwardError> {
        let Kept {
            queue,
            table,
            alloc,
            draws,
            mine,
            mut latency,
        } = kept;
        let per_queue = mine.len();
        latency.track(spec.backends.iter().map(|b| (b.tag, !b.xsk)));
        let want = spec.backend_sockets;
        if fds.backends.len() != spec.backends.len()
            || fds
                .backends
                .iter()
                .any(|b| b.len() != want as usize || b.is_empty())
        {
            return Err(ForwardError::Sockets { want });
        }
        let backend_keys = spec
            .backends
            .iter()
            .map(|b| (b.address.is_ipv6(), ip16(b.address.ip()), b.address.port()))
            .collect();
        if fds.steered.len() != spec.steered.len() {
            return Err(ForwardError::Receivers {
                want: spec.steered.len(),
            });
        }
        let pools = fds
            .backends
            .into_iter()
            .zip(&spec.backends)
            .map(|(fds, b)| {
                let mut p = pool(fds)?;
                if !b.xsk && spec.steered.contains(&b.address.is_ipv6()) {
                    p.peer = Some(b.address);
                }
                Ok(p)
            })
            .collect::<io::Result<_>>()?;
        let receivers = pool(fds.steered)?.socks;
        let steered_batch = if receivers.is_empty() {
            RecvBatch::default()
        } else {
            RecvBatch::with_destinations(STEERED_PER_CALL, RECV_BUF)
        };
        Ok(Forwarder {
            queue,
            table,
            alloc,
            draws,
            ahead: None,
            pools,
            spec,
            backend_keys,
            mine,
            latency,
            busy: true,
            sweeps: 0,
            sweep_list: Vec::with_capacity(per_queue),
            listeners: Listeners::default(),
            batch: RecvBatch::new(RECV_PER_CALL, RECV_BUF),
            receivers,
            steered_batch,
            cache: None,
            clock: std::cell::Cell::new(None),
        })
    }

    /// The forwarder after a reconfiguration: new backends, pools and
    /// timeouts over the same table and place in it, so queries in flight
    /// to backends that are kept are still answered.
    pub fn reconfigured(
        self,
        spec: ForwardSpec,
        fds: ForwardFds,
    ) -> Result<Forwarder, ForwardError> {
        let kept = Kept {
            queue: self.queue,
            table: self.table,
            alloc: self.alloc,
            draws: self.draws,
            mine: self.mine,
            latency: self.latency,
        };
        let cache = self.cache;
        let mut f = Forwarder::build(kept, spec, fds)?;
        f.cache = cache;
        Ok(f)
    }

    /// Our listen addresses (at start and after a reconfiguration): only
    /// entries naming one of them are answered.
    pub fn set_listen(&mut self, listen: &[SocketAddr]) {
        self.listeners = Listeners::new(listen);
    }

    /// Watches every backend socket.
    pub fn watch(&self, poller: &Poller) -> io::Result<()> {
        for (b, p) in self.pools.iter().enumerate() {
            for (s, sock) in p.socks.iter().enumerate() {
                poller.add(sock.as_fd(), Token::Backend(b as u16, s as u32))?;
            }
        }
        for (i, sock) in self.receivers.iter().enumerate() {
            poller.add(sock.as_fd(), Token::Steered(i as u32))?;
        }
        Ok(())
    }

    /// Whether `port` is one of the forwarding ports (a reply's destination).
    #[inline]
    pub fn is_reply_port(&self, port: u16) -> bool {
        port.checked_sub(self.spec.port_base)
            .is_some_and(|off| u32::from(off) < self.spec.ports)
    }

    /// Which queries in flight a new one (sent `now`) may push out: those
    /// presumed lost by [`Latency`].
    fn evictable(latency: &Latency, timeout_ms: u32, now: u64) -> impl Fn(u16, u64) -> bool + '_ {
        move |tag, sent| now.saturating_sub(sent) > latency.lost_after_ns(tag, timeout_ms)
    }

    /// A new batch of the worker's loop begins: the next query or reply
    /// reads the clock, and the rest of the batch shares that reading (one
    /// `clock_gettime`, 24 ns on this VM, per batch rather than two per
    /// forwarded query; a batch lasts microseconds, far below the latency
    /// resolution that matters and the milliseconds of a timeout).
    pub fn new_batch(&self) {
        self.clock.set(None);
    }

    /// The batch's clock, in nanoseconds.
    fn now_ns(&self) -> u64 {
        match self.clock.get() {
            Some(ns) => ns,
            None => {
                let ns = monotonic_ns();
                self.clock.set(Some(ns));
                ns
            }
        }
    }

    fn entry(&self, backend: u16, client: Client, question: &[u8], cache: Option<u32>) -> Entry {
        let now = self.now_ns();
        let mut q = [0u8; MAX_QUESTION];
        let n = question.len().min(MAX_QUESTION);
        q[..n].copy_from_slice(&question[..n]);
        Entry {
            deadline_ms: now / 1_000_000 + u64::from(self.spec.timeout_ms),
            sent_ns: now,
            backend: self.spec.backends[usize::from(backend)].tag,
            client,
            question_len: n as u16,
            question: q,
            cache,
        }
    }

    /// A key for AF_XDP: a port of the shared range and an ID, both random.
    fn xsk_key(draws: &mut Draws, base: u16, ports: u32) -> u32 {
        let r = draws.draw();
        inflight::key(base + below(r as u32, ports) as u16, (r >> 32) as u16)
    }

    /// A key for a socket of backend `b`: one of its sockets at random (its
    /// port) and a random ID; `chosen` learns which socket.
    fn socket_key<'a>(
        pool: &'a Pool,
        draws: &'a mut Draws,
        chosen: &'a mut usize,
    ) -> impl FnMut() -> u32 + 'a {
        move || {
            let r = draws.draw();
            *chosen = below(r as u32, pool.socks.len() as u32) as usize;
            inflight::key(pool.ports[*chosen], (r >> 32) as u16)
        }
    }

    /// Forwards the query in frame `chunk[head..]` (parsed as `p`, `q`) to
    /// `backend`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_frame(
        &mut self,
        chunk: &mut [u8],
        head: usize,
        p: &Parsed,
        q: &Query,
        (backend, cache): (u16, Option<Variant>),
        backends: &mut Backends,
        c: &mut DataplaneCounters,
    ) -> Sent {
        let a = p.addrs(&chunk[head..]);
        let at = head + p.payload();
        let len = p.payload_len;
        let client = Client {
            xsk: true,
            v6: a.v6,
            vlan: a.vlan,
            mac: a.src_mac,
            ip: a.src_ip,
            port: a.sport,
            local_ip: a.dst_ip,
            local_port: a.dport,
            id: q.id,
            flags: q.flags,
            edns: q.edns.is_some(),
            dnssec_ok: q.edns.is_some_and(|e| e.dnssec_ok),
        };
        let entry = self.entry(
            backend,
            client,
            &chunk[at + HEADER_LEN..at + q.question_end],
            cache.map(Variant::bits),
        );
        let bi = usize::from(backend);
        let mac = backends.live(backend).and_then(|l| l.mac);
        let spec = &self.spec.backends[bi];
        if let (true, Some(mac)) = (spec.xsk, mac) {
            let v6 = spec.address.is_ipv6();
            let (src, dst, dport) = (
                ip16(spec.source),
                ip16(spec.address.ip()),
                spec.address.port(),
            );
            let room = wire_room(&self.spec, v6);
            let ins = {
                let evict = Self::evictable(&self.latency, self.spec.timeout_ms, entry.sent_ns);
                let (base, ports) = (self.spec.port_base, self.spec.ports);
                let (draws, ahead) = (&mut self.draws, &mut self.ahead);
                let draw = || {
                    ahead
                        .take()
                        .unwrap_or_else(|| Self::xsk_key(draws, base, ports))
                };
                self.table.insert(&mut self.alloc, &entry, evict, draw)
            };
            let Some(key) = self.settle(ins, entry.backend, backends, c) else {
                return Sent::Failed(FailAction::Drop);
            };
            let next = Self::xsk_key(&mut self.draws, self.spec.port_base, self.spec.ports);
            self.table.prefetch_key(next);
            self.ahead = Some(next);
            let msg = &mut chunk[at..at + len];
            msg[0..2].copy_from_slice(&(key as u16).to_be_bytes());
            clamp_udp_size(msg, q, room);
            c.backend(bi).queries += 1;
            backends.sent(backend);
            let h = Headers {
                dst_mac: mac,
                src_mac: self.spec.local_mac,
                vlan: None,
                v6,
                src_ip: src,
                dst_ip: dst,
                sport: (key >> 16) as u16,
                dport,
            };
            return match frame::write_headers(chunk, at, len, &h) {
                Some(start) => Sent::Frame {
                    head: start,
                    len: at + len - start,
                },
                None => Sent::Failed(FailAction::ServFail),
            };
        }
        match self.send(&mut chunk[at..at + len], &entry, backend, backends, c) {
            Ok(()) => Sent::Socket,
            Err(a) => Sent::Failed(a),
        }
    }

    /// Bookkeeping of a slot just taken for a query to backend `tag`: the
    /// query it evicted (the queue's oldest, when the region was full)
    /// counts as a timeout of its backend; one answered elsewhere since the
    /// last sweep is done. `None` (counted): no slot was free — the queue
    /// has `max_in_flight` queries in flight, none old enough to give up:
    /// the query is dropped, as a saturated server drops what it cannot
    /// take (the client retries; answering would only add to the load).
    fn settle(
        &mut self,
        ins: Result<inflight::Inserted, inflight::InsertError>,
        tag: u16,
        backends: &mut Backends,
        c: &mut DataplaneCounters,
    ) -> Option<u32> {
        let Ok(ins) = ins else {
            c.forward.no_slot += 1;
            return None;
        };
        if let Some(evicted) = ins.evicted {
            c.forward.evicted += 1;
            if let Some(bi) = backends.index_of(evicted) {
                c.backend(bi).timeouts += 1;
                backends.done(bi as u16);
            }
        } else if let Some(old) = self.mine.get(ins.index as usize).and_then(|m| m.tag())
            && let Some(bi) = backends.index_of(old)
        {
            backends.done(bi as u16);
        }
        if let Some(m) = self.mine.get_mut(ins.index as usize) {
            *m = Mine::InFlight(tag);
        }
        self.busy = true;
        Some(ins.key)
    }

    /// Sends `msg` (the query, `entry` its record) on one of `backend`'s
    /// sockets, drawn at random, with a random ID.
    fn send(
        &mut self,
        msg: &mut [u8],
        entry: &Entry,
        backend: u16,
        backends: &mut Backends,
        c: &mut DataplaneCounters,
    ) -> Result<(), FailAction> {
        let bi = usize::from(backend);
        let mut chosen = 0;
        let ins = {
            let pool = &self.pools[bi];
            let evict = Self::evictable(&self.latency, self.spec.timeout_ms, entry.sent_ns);
            let mut draw = Self::socket_key(pool, &mut self.draws, &mut chosen);
            self.table.insert(&mut self.alloc, entry, evict, &mut draw)
        };
        let Some(key) = self.settle(ins, entry.backend, backends, c) else {
            return Err(FailAction::Drop);
        };
        msg[0..2].copy_from_slice(&(key as u16).to_be_bytes());
        c.backend(bi).queries += 1;
        backends.sent(backend);
        let pool = &self.pools[bi];
        let sent = match pool.peer {
            Some(to) => pool.socks[chosen].send_to(msg, to),
            None => pool.socks[chosen].send(msg),
        };
        if sent.is_err() {
            c.forward.send_errors += 1;
        }
        Ok(())
    }

    /// Forwards a query that arrived on a kernel-path socket (`local`) from
    /// `from` to `backend`, over one of its sockets.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_datagram(
        &mut self,
        msg: &mut [u8],
        q: &Query,
        (backend, cache): (u16, Option<Variant>),
        from: SocketAddr,
        local: SocketAddr,
        backends: &mut Backends,
        c: &mut DataplaneCounters,
    ) -> Result<(), FailAction> {
        let client = Client {
            xsk: false,
            v6: from.is_ipv6(),
            vlan: None,
            mac: [0; 6],
            ip: ip16(from.ip()),
            port: from.port(),
            local_ip: ip16(local.ip()),
            local_port: local.port(),
            id: q.id,
            flags: q.flags,
            edns: q.edns.is_some(),
            dnssec_ok: q.edns.is_some_and(|e| e.dnssec_ok),
        };
        let entry = self.entry(
            backend,
            client,
            &msg[HEADER_LEN..q.question_end],
            cache.map(Variant::bits),
        );
        self.send(msg, &entry, backend, backends, c)
    }

    /// Matches a reply that arrived with `key` from `backend` and rewrites
    /// `msg` for its client: the client's ID is restored. Returns the entry,
    /// or `None` (counted) if it matches nothing.
    fn claim(
        &mut self,
        key: u32,
        backend: u16,
        msg: &mut [u8],
        c: &mut DataplaneCounters,
    ) -> Option<Claimed> {
        if msg.len() < HEADER_LEN || msg[2] & 0x80 == 0 {
            c.forward.bad_replies += 1;
            return None;
        }
        // The question must be the one we sent: a reply with the right key
        // but another question is hostile and must not consume the slot.
        // Error replies without a question (FORMERR, SERVFAIL, NOTIMP,
        // REFUSED with QDCOUNT 0) are what backends send for queries they
        // cannot parse; dnsdist relays them, and so do we.
        let questionless_error = msg[4..6] == [0, 0] && matches!(msg[3] & 0x0f, 1 | 2 | 4 | 5);
        let question_ok = |e: &Entry| {
            let q = e.question();
            if q.is_empty() {
                // A question-less query (a cookie-only QUERY, an opcode
                // without question): its reply carries none either.
                return msg[4..6] == [0, 0];
            }
            questionless_error || msg.get(HEADER_LEN..HEADER_LEN + q.len()) == Some(q)
        };
        let tag = self.spec.backends[usize::from(backend)].tag;
        match self.table.claim_if(key, tag, question_ok) {
            Ok(claimed) => {
                // Ours: the next sweep need not look at its slot to learn so.
                if claimed.owner == self.queue
                    && let Some(m) = self.mine.get_mut(claimed.index as usize)
                    && let Mine::InFlight(t) = *m
                {
                    *m = Mine::Answered(t);
                }
                msg[0..2].copy_from_slice(&claimed.entry.client.id.to_be_bytes());
                let ns = self.now_ns().saturating_sub(claimed.entry.sent_ns);
                self.latency.observe(tag, ns);
                let us = ns / 1000;
                let bc = c.backend(usize::from(backend));
                bc.replies += 1;
                bc.observe(us);
                Some(claimed)
            }
            Err(ClaimError::Taken) => {
                c.forward.duplicate_replies += 1;
                None
            }
            Err(ClaimError::Unknown) => {
                c.forward.stray_replies += 1;
                None
            }
            Err(ClaimError::Mismatch) => {
                c.forward.bad_replies += 1;
                None
            }
        }
    }

    fn backend_at(&self, v6: bool, ip: &[u8; 16], port: u16) -> Option<u16> {
        self.backend_keys
            .iter()
            .position(|k| k.0 == v6 && &k.1 == ip && k.2 == port)
            .map(|i| i as u16)
    }

    /// The largest reply the client's leg takes in one frame.
    fn client_room(&self, cl: &Client) -> usize {
        wire_room(&self.spec, cl.v6)
    }

    /// A reply that arrived over AF_XDP (its destination is a forwarding
    /// port): rewritten in place to the client, or sent through the kernel
    /// path if the client came that way or it is too large for its wire.
    #[allow(clippy::too_many_arguments)]
    pub fn reply_frame(
        &mut self,
        chunk: &mut [u8],
        head: usize,
        p: &Parsed,
        clamp: TtlClamp,
        c: &mut DataplaneCounters,
        emit: &mut dyn Emit,
    ) -> Fate {
        let a = p.addrs(&chunk[head..]);
        let at = head + p.payload();
        let len = p.payload_len;
        let Some(b) = self.backend_at(a.v6, &a.src_ip, a.sport) else {
            c.forward.stray_replies += 1;
            return Fate::Recycle;
        };
        if len < HEADER_LEN {
            c.forward.bad_replies += 1;
            return Fate::Recycle;
        }
        let key = inflight::key(a.dport, u16::from_be_bytes([chunk[at], chunk[at + 1]]));
        let Some(claimed) = self.claim(key, b, &mut chunk[at..at + len], c) else {
            return Fate::Recycle;
        };
        clamp.apply(&mut chunk[at..at + len]);
        self.remember(&claimed.entry, &chunk[at..at + len], c);
        let cl = claimed.entry.client;
        if !self.listeners.trusts(&cl) {
            c.forward.bad_entries += 1;
            return Fate::Recycle;
        }
        if cl.xsk && len <= self.client_room(&cl) {
            let h = client_headers(&cl, self.spec.local_mac);
            if let Some(start) = frame::write_headers(chunk, at, len, &h) {
                return Fate::Transmit {
                    head: start,
                    len: at + len - start,
                };
            }
        }
        if cl.xsk {
            c.forward.large_replies += 1;
        }
        emit.kernel(
            sockaddr(cl.v6, &cl.local_ip, cl.local_port),
            sockaddr(cl.v6, &cl.ip, cl.port),
            &chunk[at..at + len],
        );
        Fate::Recycle
    }

    /// Reads the replies waiting on socket `s` of backend `b` and delivers
    /// them. Returns how many were read.
    pub fn serve_socket(
        &mut self,
        b: u16,
        s: u32,
        clamp: TtlClamp,
        c: &mut DataplaneCounters,
        emit: &mut dyn Emit,
    ) -> usize {
        let Some(pool) = self.pools.get(usize::from(b)) else {
            return 0;
        };
        let Some(sock) = pool.socks.get(s as usize) else {
            return 0;
        };
        let port = pool.ports[s as usize];
        // One system call for what waits (a pool spreads replies over many
        // sockets, so often one each), no more than there are frames for.
        let mut batch = std::mem::take(&mut self.batch);
        // An error is the socket's pending one (an ICMP error on a connected
        // socket): reading clears it, and the replies wait for the next call.
        let n = batch.receive(sock.as_fd(), emit.frames_free()).unwrap_or(0);
        for i in 0..n {
            match batch.datagram(i) {
                Some(Received::Whole(msg)) => self.reply_datagram(b, port, msg, clamp, c, emit),
                // Larger than we take: not a reply to a query we sent.
                _ => c.forward.bad_replies += 1,
            }
        }
        self.batch = batch;
        n
    }

    /// Reads the replies waiting on receiving socket `i` (steered there
    /// from our pool sockets) and delivers them: each is matched to its
    /// backend by source address and port and to its query by the pool
    /// port it was sent to and its ID, as on the pool socket itself.
    /// Returns how many were read.
    pub fn serve_steered(
        &mut self,
        i: u32,
        clamp: TtlClamp,
        c: &mut DataplaneCounters,
        emit: &mut dyn Emit,
    ) -> usize {
        let Some(sock) = self.receivers.get(i as usize) else {
            return 0;
        };
        let mut batch = std::mem::take(&mut self.steered_batch);
        let n = batch.receive(sock.as_fd(), emit.frames_free()).unwrap_or(0);
        for k in 0..n {
            let (Some(from), Some(to)) = (batch.source(k), batch.destination(k)) else {
                c.forward.stray_replies += 1;
                continue;
            };
            let Some(b) = self.backend_at(from.is_ipv6(), &ip16(from.ip()), from.port()) else {
                c.forward.stray_replies += 1;
                continue;
            };
            match batch.datagram(k) {
                Some(Received::Whole(msg)) => {
                    c.forward.steered_replies += 1;
                    self.reply_datagram(b, to.port(), msg, clamp, c, emit)
                }
                _ => c.forward.bad_replies += 1,
            }
        }
        self.steered_batch = batch;
        n
    }

    fn reply_datagram(
        &mut self,
        backend: u16,
        port: u16,
        msg: &mut [u8],
        clamp: TtlClamp,
        c: &mut DataplaneCounters,
        emit: &mut dyn Emit,
    ) {
        if msg.len() < HEADER_LEN {
            c.forward.bad_replies += 1;
            return;
        }
        let key = inflight::key(port, u16::from_be_bytes([msg[0], msg[1]]));
        let Some(claimed) = self.claim(key, backend, msg, c) else {
            return;
        };
        clamp.apply(msg);
        self.remember(&claimed.entry, msg, c);
        let cl = claimed.entry.client;
        if !self.listeners.trusts(&cl) {
            c.forward.bad_entries += 1;
            return;
        }
        let payload = &*msg;
        let framed = cl.xsk
            && payload.len() <= self.client_room(&cl)
            && emit.frame(&client_headers(&cl, self.spec.local_mac), payload);
        if cl.xsk && !framed {
            c.forward.large_replies += 1;
        }
        if !framed {
            emit.kernel(
                sockaddr(cl.v6, &cl.local_ip, cl.local_port),
                sockaddr(cl.v6, &cl.ip, cl.port),
                payload,
            );
        }
    }

    /// Puts a backend's answer `msg` to the query of `entry` into the
    /// cache, if the query may be cached and the answer may be (see
    /// `dns::cacheable`): its question must be the query's, byte for byte.
    fn remember(&self, entry: &Entry, msg: &[u8], c: &mut DataplaneCounters) {
        let (Some(cache), Some(bits), Some(spec)) =
            (self.cache.as_deref(), entry.cache, self.spec.cache.as_ref())
        else {
            return;
        };
        cache.store_answer(
            &spec.ttls,
            Variant::from_bits(bits),
            entry.question(),
            msg,
            &mut c.cache,
        );
    }

    /// Walks this queue's region (while busy, mostly just the slots of our
    /// own queries: see `FULL_SWEEP_EVERY`): learns which queries were
    /// answered (wherever), frees the expired ones and, per
    /// `timeout_action`, answers their clients with the answer writer every
    /// local answer uses.
    pub fn sweep(
        &mut self,
        backends: &mut Backends,
        c: &mut DataplaneCounters,
        udp_size: u16,
        emit: &mut dyn Emit,
    ) {
        let now_ms = monotonic_ns() / 1_000_000;
        let action = self.spec.timeout_action;
        let local_mac = self.spec.local_mac;
        let full = !self.busy || self.sweeps.is_multiple_of(FULL_SWEEP_EVERY);
        self.sweeps = self.sweeps.wrapping_add(1);
        let mut list = std::mem::take(&mut self.sweep_list);
        list.clear();
        if !full {
            for (i, m) in self.mine.iter_mut().enumerate() {
                match *m {
                    Mine::Free => {}
                    Mine::InFlight(_) => list.push(i as u32),
                    Mine::Answered(tag) => {
                        *m = Mine::Free;
                        if let Some(bi) = backends.index_of(tag) {
                            backends.done(bi as u16);
                        }
                    }
                }
            }
        }
        let mine = &mut self.mine;
        let listeners = &self.listeners;
        let mut answered = 0usize;
        let visit = visitor(|index, swept| {
            let Some(slot) = mine.get_mut(index as usize) else {
                return;
            };
            let e = match swept {
                Swept::Free => {
                    if let Some(tag) = slot.take()
                        && let Some(bi) = backends.index_of(tag)
                    {
                        backends.done(bi as u16);
                    }
                    return;
                }
                Swept::Expired(e) => e,
            };
            // Only entries this process wrote move its backend accounting:
            // a predecessor's, or one a sibling planted, are answered (if
            // they pass the checks below) but count against no backend.
            if let Some(tag) = slot.take()
                && let Some(bi) = backends.index_of(tag)
            {
                c.backend(bi).timeouts += 1;
                backends.done(bi as u16);
            }
            let Some(rcode) = action.rcode() else {
                return;
            };
            let cl = e.client;
            if !listeners.trusts(&cl) {
                c.forward.bad_entries += 1;
                return;
            }
            if answered >= SWEEP_ANSWERS {
                c.forward.sweep_limited += 1;
                return;
            }
            answered += 1;
            let original = dns::Original {
                id: cl.id,
                flags: cl.flags,
                question: e.question(),
                edns: cl.edns.then_some(Edns {
                    udp_size: 0,
                    version: 0,
                    dnssec_ok: cl.dnssec_ok,
                }),
            };
            let mut msg = [0u8; HEADER_LEN + MAX_QUESTION + 11];
            let Ok(n) = dns::write_answer_for(&mut msg, &original, rcode, udp_size) else {
                return;
            };
            let payload = &msg[..n];
            let framed = cl.xsk && emit.frame(&client_headers(&cl, local_mac), payload);
            if !framed {
                emit.kernel(
                    sockaddr(cl.v6, &cl.local_ip, cl.local_port),
                    sockaddr(cl.v6, &cl.ip, cl.port),
                    payload,
                );
            }
        });
        if full {
            self.table.sweep(self.queue, now_ms, visit);
        } else {
            self.table.sweep_slots(self.queue, now_ms, &list, visit);
        }
        self.sweep_list = list;
        self.busy = self.mine.iter().any(|m| *m != Mine::Free);
    }

    /// Whether the region needs sweeping at the normal pace: queries of
    /// ours are (or may be) in flight. Otherwise (every answer from the
    /// cache, say) a slower pace still finds what others left in it.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Refreshes the in-flight gauge.
    pub fn gauge(&self, c: &mut DataplaneCounters) {
        c.forward.in_flight = u64::from(self.table.in_flight(self.queue));
    }
}

/// Gives a sweep's closure the signature `Table::sweep` takes (for any
/// lifetime of the entry it is shown).
fn visitor<F: FnMut(u32, Swept<'_>)>(f: F) -> F {
    f
}

/// Asks the backend for no larger a UDP reply than `room` (if the query
/// asked for more): the OPT record's payload size, rewritten in place.
fn clamp_udp_size(msg: &mut [u8], q: &Query, room: usize) {
    let (Some(at), Some(e)) = (q.opt_size_at, q.edns) else {
        return;
    };
    let room = room.clamp(512, usize::from(u16::MAX)) as u16;
    if e.udp_size > room
        && let Some(field) = msg.get_mut(at..at + 2)
    {
        field.copy_from_slice(&room.to_be_bytes());
    }
}

fn client_headers(cl: &Client, local_mac: [u8; 6]) -> Headers {
    Headers {
        dst_mac: cl.mac,
        src_mac: local_mac,
        vlan: cl.vlan,
        v6: cl.v6,
        src_ip: cl.local_ip,
        dst_ip: cl.ip,
        sport: cl.local_port,
        dport: cl.port,
    }
}
