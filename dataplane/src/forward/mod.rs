//! Forwarding queries to backends and their replies to the clients.
//!
//! A query arriving over AF_XDP is re-addressed in place to its backend and
//! sent on this queue (AF_XDP backends), or sent on this dataplane's UDP
//! socket to the backend (socket backends); one arriving on a kernel-path
//! socket always takes the socket. Either way it gets a slot in the shared
//! in-flight [`table`] and a DNS ID naming the slot. Replies come back over
//! AF_XDP on any queue (the XDP program redirects our forwarding ports), on
//! the backend socket, or — when larger than a frame — on this queue's
//! port-reserving socket; whoever receives one claims the slot and answers
//! the client the way it came.

pub mod pool;
pub mod table;

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use xdpdns_common::config::FailAction;
use xdpdns_common::inflight::MAX_QUESTION;
use xdpdns_common::ipc::{BackendLive, ForwardSpec};
use xdpdns_common::stats::DataplaneCounters;

use crate::dns::{HEADER_LEN, Query};
use crate::frame::{self, Headers, Parsed};
use pool::Pool;
use table::{Allocator, ClaimError, Client, Entry, Table};

/// The descriptors that come with a [`ForwardSpec`].
pub struct ForwardFds {
    pub table: OwnedFd,
    pub ports: Vec<OwnedFd>,
    pub backends: Vec<OwnedFd>,
}

impl ForwardFds {
    /// Splits the descriptors that came with Init or Reconfigure: the
    /// kernel-path sockets first, then the forwarding ones. `None` if the
    /// count is wrong.
    pub fn split(
        mut fds: Vec<OwnedFd>,
        kernel: usize,
        spec: Option<&ForwardSpec>,
    ) -> Option<(Vec<OwnedFd>, Option<ForwardFds>)> {
        let need = kernel + spec.map_or(0, |s| 1 + s.port_sockets as usize + s.backends.len());
        if fds.len() != need {
            return None;
        }
        let rest = fds.split_off(kernel);
        let Some(s) = spec else {
            return Some((fds, None));
        };
        let mut it = rest.into_iter();
        let table = it.next()?;
        let ports: Vec<OwnedFd> = it.by_ref().take(s.port_sockets as usize).collect();
        let backends: Vec<OwnedFd> = it.collect();
        Some((
            fds,
            Some(ForwardFds {
                table,
                ports,
                backends,
            }),
        ))
    }
}

/// The outcome of handing a frame to the forwarder.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameOutcome {
    /// Transmit the chunk's bytes `[head, head + len)`.
    Tx { head: usize, len: usize },
    /// The frame's content went elsewhere (a socket); recycle the chunk.
    Consumed,
    /// Not forwarded: answer locally with this (or drop).
    Fail(FailAction),
    /// Discarded; already counted.
    Discard,
}

/// An answer for a client that is not in a frame yet.
pub enum Delivery<'a> {
    /// Build a frame with these headers around `payload`.
    Xsk { headers: Headers, payload: &'a [u8] },
    /// Send `payload` to `to` from the kernel-path socket bound to `local`.
    Kernel {
        local: SocketAddr,
        to: SocketAddr,
        payload: &'a [u8],
    },
}

pub struct Forwarder {
    queue: u32,
    spec: ForwardSpec,
    live: Vec<BackendLive>,
    table: Table,
    alloc: Allocator,
    pools: Vec<Pool>,
    outstanding: Vec<u32>,
    backend_socks: Vec<UdpSocket>,
    port_socks: Vec<UdpSocket>,
    /// Backend addresses as frames carry them, for matching replies.
    backend_keys: Vec<(bool, [u8; 16], u16)>,
    buf: Box<[u8]>,
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

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so a
/// restarted dataplane reads its predecessor's deadlines right.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Forwarder {
    pub fn new(queue: u32, spec: ForwardSpec, fds: ForwardFds) -> io::Result<Forwarder> {
        if fds.backends.len() != spec.backends.len() {
            return Err(io::Error::other("one socket per backend expected"));
        }
        let table = Table::open(fds.table.as_fd(), spec.regions, spec.max_in_flight)?;
        let pools = spec
            .pools
            .iter()
            .map(|p| {
                let members: Vec<(u16, u32, String)> = p
                    .members
                    .iter()
                    .map(|m| {
                        let b = &spec.backends[usize::from(*m)];
                        (*m, b.weight, b.address.to_string())
                    })
                    .collect();
                Pool::new(p.policy, &members)
            })
            .collect();
        let backend_keys = spec
            .backends
            .iter()
            .map(|b| (b.address.is_ipv6(), ip16(b.address.ip()), b.address.port()))
            .collect();
        let n = spec.backends.len();
        let udp = |fds: Vec<OwnedFd>| -> io::Result<Vec<UdpSocket>> {
            fds.into_iter()
                .map(|fd| {
                    let s = UdpSocket::from(fd);
                    // fcntl, not set_nonblocking's ioctl: this also runs
                    // under the seccomp filter (a reconfiguration).
                    let fl = nix::fcntl::fcntl(&s, nix::fcntl::FcntlArg::F_GETFL)?;
                    let fl =
                        nix::fcntl::OFlag::from_bits_retain(fl) | nix::fcntl::OFlag::O_NONBLOCK;
                    nix::fcntl::fcntl(&s, nix::fcntl::FcntlArg::F_SETFL(fl))?;
                    Ok(s)
                })
                .collect()
        };
        Ok(Forwarder {
            queue,
            alloc: table.allocator(queue),
            live: spec.live.clone(),
            spec,
            table,
            pools,
            outstanding: vec![0; n],
            backend_socks: udp(fds.backends)?,
            port_socks: udp(fds.ports)?,
            backend_keys,
            buf: vec![0u8; 65536].into_boxed_slice(),
        })
    }

    pub fn set_live(&mut self, live: Vec<BackendLive>) {
        if live.len() == self.live.len() {
            self.live = live;
        }
    }

    /// Sockets to watch while idle.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.backend_socks
            .iter()
            .chain(&self.port_socks)
            .map(|s| s.as_fd())
    }

    /// The queue owning forwarding port `port`, if it is one.
    pub fn reply_port(&self, port: u16) -> Option<u32> {
        let off = port.checked_sub(self.spec.port_base)?;
        (u32::from(off) < self.spec.regions).then_some(u32::from(off))
    }

    fn pick(&mut self, qname: &[u8]) -> Option<u16> {
        let pool = usize::from(self.spec.default_pool);
        let (live, outstanding) = (&self.live, &self.outstanding);
        let p = self.pools.get_mut(pool)?;
        p.pick(
            qname,
            |b| live[usize::from(b)].up,
            |b| outstanding[usize::from(b)],
        )
    }

    /// The index of the backend with table tag `tag`.
    fn index_of(&self, tag: u16) -> Option<usize> {
        self.spec.backends.iter().position(|b| b.tag == tag)
    }

    /// Takes over what `old` (the forwarder before a reconfiguration) had
    /// going: its place in the in-flight table, so queries in flight to
    /// backends that are kept are still answered, and the per-backend
    /// counters, re-indexed to the new backend list.
    pub fn take_over(&mut self, old: Forwarder, c: &mut DataplaneCounters) {
        let map: Vec<Option<usize>> = self
            .spec
            .backends
            .iter()
            .map(|b| old.index_of(b.tag))
            .collect();
        for (new, o) in map.iter().enumerate() {
            if let Some(o) = o {
                self.outstanding[new] = old.outstanding.get(*o).copied().unwrap_or(0);
            }
        }
        c.remap_backends(&map);
        if old.table.per_queue() == self.table.per_queue() {
            self.alloc = old.alloc;
        }
    }

    fn entry(&self, backend: u16, client: Client, question: &[u8]) -> Entry {
        let now = monotonic_ns();
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
        }
    }

    /// Takes a slot for `entry`; the query it evicts (the queue's oldest,
    /// when the region is full) is counted as a timeout of its backend.
    fn insert(&mut self, entry: &Entry, c: &mut DataplaneCounters) -> Option<u16> {
        let ins = self.table.insert(&mut self.alloc, entry)?;
        if let Some(tag) = ins.evicted {
            c.forward.evicted += 1;
            // A backend removed by a reload since has no counters left.
            if let Some(bi) = self.index_of(tag) {
                c.backend(bi).timeouts += 1;
                self.outstanding[bi] = self.outstanding[bi].saturating_sub(1);
            }
        }
        Some(ins.id)
    }

    /// Forwards the query in frame `chunk[head..]` (parsed as `p`, `q`).
    pub fn forward_frame(
        &mut self,
        chunk: &mut [u8],
        head: usize,
        p: &Parsed,
        q: &Query,
        c: &mut DataplaneCounters,
    ) -> FrameOutcome {
        let a = p.addrs(&chunk[head..]);
        let at = head + p.payload();
        let len = p.payload_len;
        let Some(b) = self.pick(q.qname(&chunk[at..at + len])) else {
            c.forward.pool_down += 1;
            return FrameOutcome::Fail(self.spec.all_down_action);
        };
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
        };
        let entry = self.entry(b, client, &chunk[at + HEADER_LEN..at + q.question_end]);
        let Some(id) = self.insert(&entry, c) else {
            return FrameOutcome::Fail(FailAction::ServFail);
        };
        chunk[at..at + 2].copy_from_slice(&id.to_be_bytes());
        let bi = usize::from(b);
        c.backend(bi).queries += 1;
        self.outstanding[bi] += 1;
        let spec = &self.spec.backends[bi];
        if let (true, Some(mac)) = (spec.xsk, self.live[bi].mac) {
            let h = Headers {
                dst_mac: mac,
                src_mac: self.spec.local_mac,
                vlan: None,
                v6: spec.address.is_ipv6(),
                src_ip: ip16(spec.source),
                dst_ip: ip16(spec.address.ip()),
                sport: self.spec.port_base + self.queue as u16,
                dport: spec.address.port(),
            };
            if let Some(start) = frame::write_headers(chunk, at, len, &h) {
                return FrameOutcome::Tx {
                    head: start,
                    len: at + len - start,
                };
            }
        }
        if self.backend_socks[bi].send(&chunk[at..at + len]).is_err() {
            c.forward.send_errors += 1;
        }
        FrameOutcome::Consumed
    }

    /// Forwards a query that arrived on a kernel-path socket (`local`) from
    /// `from`; the reply comes back through [`Forwarder::poll`].
    pub fn forward_datagram(
        &mut self,
        msg: &mut [u8],
        q: &Query,
        from: SocketAddr,
        local: SocketAddr,
        c: &mut DataplaneCounters,
    ) -> Result<(), FailAction> {
        let Some(b) = self.pick(q.qname(msg)) else {
            c.forward.pool_down += 1;
            return Err(self.spec.all_down_action);
        };
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
        };
        let entry = self.entry(b, client, &msg[HEADER_LEN..q.question_end]);
        let Some(id) = self.insert(&entry, c) else {
            return Err(FailAction::ServFail);
        };
        msg[0..2].copy_from_slice(&id.to_be_bytes());
        let bi = usize::from(b);
        c.backend(bi).queries += 1;
        self.outstanding[bi] += 1;
        if self.backend_socks[bi].send(msg).is_err() {
            c.forward.send_errors += 1;
        }
        Ok(())
    }

    /// Matches a reply and rewrites `msg` for its client: the client's ID is
    /// restored. Returns the entry, or `None` (counted) if it matches nothing.
    fn claim(
        &mut self,
        owner: u32,
        backend: u16,
        msg: &mut [u8],
        c: &mut DataplaneCounters,
    ) -> Option<Entry> {
        if msg.len() < HEADER_LEN || msg[2] & 0x80 == 0 {
            c.forward.bad_replies += 1;
            return None;
        }
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        // The question must be the one we sent: a reply with the right ID
        // but another question is hostile and must not consume the slot.
        let question_ok = |e: &Entry| {
            let q = e.question();
            msg.get(HEADER_LEN..HEADER_LEN + q.len()) == Some(q)
        };
        let tag = self.spec.backends[usize::from(backend)].tag;
        match self.table.claim_if(owner, id, tag, question_ok) {
            Ok(e) => {
                msg[0..2].copy_from_slice(&e.client.id.to_be_bytes());
                let bi = usize::from(backend);
                let us = monotonic_ns().saturating_sub(e.sent_ns) / 1000;
                let bc = c.backend(bi);
                bc.replies += 1;
                bc.observe(us);
                if owner == self.queue {
                    self.outstanding[bi] = self.outstanding[bi].saturating_sub(1);
                }
                Some(e)
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

    /// A reply that arrived over AF_XDP (its destination is forwarding port
    /// of queue `owner`): rewritten in place to the client, or sent through
    /// the kernel path if the client came that way.
    pub fn reply_frame(
        &mut self,
        chunk: &mut [u8],
        head: usize,
        p: &Parsed,
        owner: u32,
        c: &mut DataplaneCounters,
        deliver: &mut dyn FnMut(Delivery<'_>) -> bool,
    ) -> FrameOutcome {
        let a = p.addrs(&chunk[head..]);
        let at = head + p.payload();
        let len = p.payload_len;
        let Some(b) = self.backend_at(a.v6, &a.src_ip, a.sport) else {
            c.forward.stray_replies += 1;
            return FrameOutcome::Discard;
        };
        let Some(e) = self.claim(owner, b, &mut chunk[at..at + len], c) else {
            return FrameOutcome::Discard;
        };
        let cl = e.client;
        if cl.xsk {
            let h = client_headers(&cl, self.spec.local_mac);
            if let Some(start) = frame::write_headers(chunk, at, len, &h) {
                return FrameOutcome::Tx {
                    head: start,
                    len: at + len - start,
                };
            }
        }
        deliver(Delivery::Kernel {
            local: sockaddr(cl.v6, &cl.local_ip, cl.local_port),
            to: sockaddr(cl.v6, &cl.ip, cl.port),
            payload: &chunk[at..at + len],
        });
        FrameOutcome::Consumed
    }

    /// Reads replies waiting on the backend and port-reserving sockets and
    /// delivers them. Returns how many were read.
    pub fn poll(
        &mut self,
        c: &mut DataplaneCounters,
        deliver: &mut dyn FnMut(Delivery<'_>) -> bool,
    ) -> usize {
        let mut n = 0;
        for b in 0..self.backend_socks.len() {
            for _ in 0..64 {
                let Ok(len) = self.backend_socks[b].recv(&mut self.buf) else {
                    break;
                };
                n += 1;
                self.reply_datagram(b as u16, len, false, c, deliver);
            }
        }
        for s in 0..self.port_socks.len() {
            for _ in 0..64 {
                let Ok((len, from)) = self.port_socks[s].recv_from(&mut self.buf) else {
                    break;
                };
                n += 1;
                let key = (from.is_ipv6(), ip16(from.ip()), from.port());
                match self.backend_keys.iter().position(|k| *k == key) {
                    Some(b) => {
                        c.forward.large_replies += 1;
                        self.reply_datagram(b as u16, len, true, c, deliver);
                    }
                    None => c.forward.stray_replies += 1,
                }
            }
        }
        n
    }

    fn reply_datagram(
        &mut self,
        backend: u16,
        len: usize,
        via_kernel: bool,
        c: &mut DataplaneCounters,
        deliver: &mut dyn FnMut(Delivery<'_>) -> bool,
    ) {
        let mut buf = std::mem::take(&mut self.buf);
        if let Some(e) = self.claim(self.queue, backend, &mut buf[..len], c) {
            let cl = e.client;
            let payload = &buf[..len];
            let delivered = if cl.xsk && !via_kernel {
                deliver(Delivery::Xsk {
                    headers: client_headers(&cl, self.spec.local_mac),
                    payload,
                })
            } else {
                false
            };
            if !delivered {
                deliver(Delivery::Kernel {
                    local: sockaddr(cl.v6, &cl.local_ip, cl.local_port),
                    to: sockaddr(cl.v6, &cl.ip, cl.port),
                    payload,
                });
            }
        }
        self.buf = buf;
    }

    /// Frees this queue's expired slots; with `timeout_action` servfail,
    /// answers their clients. Returns how many expired.
    pub fn expire(
        &mut self,
        c: &mut DataplaneCounters,
        deliver: &mut dyn FnMut(Delivery<'_>) -> bool,
    ) -> usize {
        let now_ms = monotonic_ns() / 1_000_000;
        let action = self.spec.timeout_action;
        let local_mac = self.spec.local_mac;
        let outstanding = &mut self.outstanding;
        let backends = &self.spec.backends;
        self.table.expire(self.queue, now_ms, |e| {
            if let Some(bi) = backends.iter().position(|b| b.tag == e.backend) {
                c.backend(bi).timeouts += 1;
                outstanding[bi] = outstanding[bi].saturating_sub(1);
            }
            let rcode = match action {
                FailAction::Drop => return,
                FailAction::ServFail => 2,
                FailAction::Refused => 5,
            };
            let mut msg = [0u8; HEADER_LEN + MAX_QUESTION];
            msg[0..2].copy_from_slice(&e.client.id.to_be_bytes());
            msg[2] = 0x81;
            msg[3] = rcode;
            msg[4..6].copy_from_slice(&[0, 1]);
            let q = e.question();
            msg[HEADER_LEN..HEADER_LEN + q.len()].copy_from_slice(q);
            let payload = &msg[..HEADER_LEN + q.len()];
            let cl = e.client;
            let sent = cl.xsk
                && deliver(Delivery::Xsk {
                    headers: client_headers(&cl, local_mac),
                    payload,
                });
            if !sent {
                deliver(Delivery::Kernel {
                    local: sockaddr(cl.v6, &cl.local_ip, cl.local_port),
                    to: sockaddr(cl.v6, &cl.ip, cl.port),
                    payload,
                });
            }
        })
    }

    /// Refreshes the in-flight gauge.
    pub fn gauge(&self, c: &mut DataplaneCounters) {
        c.forward.in_flight = u64::from(self.table.in_flight(self.queue));
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
