//! Carrying out a forward verdict over UDP, and relaying the replies.
//!
//! A query arriving over AF_XDP is re-addressed in place to its backend and
//! sent on this queue (AF_XDP backends), or sent on this dataplane's UDP
//! socket to the backend (socket backends); one arriving on a kernel-path
//! socket always takes the socket. Either way it gets a slot in the shared
//! in-flight table (`shm::inflight`) and a DNS ID naming the slot. Replies
//! come back over AF_XDP on any queue (the XDP program redirects our
//! forwarding ports), on the backend socket, or — when larger than a frame —
//! on this queue's port-reserving socket; whoever receives one claims the
//! slot and answers the client the way it came.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use xdpdns_common::config::FailAction;
use xdpdns_common::inflight::MAX_QUESTION;
use xdpdns_common::ipc::ForwardSpec;
use xdpdns_common::stats::DataplaneCounters;

use crate::dns::{self, Edns, HEADER_LEN, Query};
use crate::frame::{self, Headers, Parsed};
use crate::pipeline::backends::Backends;
use crate::shm::ShmError;
use crate::shm::inflight::{Allocator, ClaimError, Client, Entry, Table};
use crate::xsk::Fate;

/// Where answers that are not a frame in hand go.
pub trait Emit {
    /// Sends `payload` to `to` from the kernel-path socket bound to `local`.
    fn kernel(&mut self, local: SocketAddr, to: SocketAddr, payload: &[u8]) -> bool;
    /// Builds an AF_XDP frame with headers `h` around `payload`; false if
    /// it cannot (no free frame, or not possible right now).
    fn frame(&mut self, h: &Headers, payload: &[u8]) -> bool;
}

/// The descriptors that come with a [`ForwardSpec`].
pub struct ForwardFds {
    /// The in-flight table: with Init only (it lives as long as the instance).
    pub table: Option<OwnedFd>,
    pub ports: Vec<OwnedFd>,
    pub backends: Vec<OwnedFd>,
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
        let need = kernel
            + spec.map_or(0, |s| {
                usize::from(with_table) + s.port_sockets as usize + s.backends.len()
            });
        if fds.len() != need {
            return None;
        }
        let rest = fds.split_off(kernel);
        let Some(s) = spec else {
            return Some((fds, None));
        };
        let mut it = rest.into_iter();
        let table = if with_table { Some(it.next()?) } else { None };
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

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the in-flight table: {0}")]
    Table(#[from] ShmError),
    #[error("the loader sent no in-flight table")]
    NoTable,
    #[error("one socket per backend expected, got {got} for {want}")]
    Sockets { got: usize, want: usize },
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

pub struct Forwarder {
    queue: u32,
    spec: ForwardSpec,
    table: Table,
    alloc: Allocator,
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

/// Non-blocking UDP sockets from descriptors the loader bound.
fn udp(fds: Vec<OwnedFd>) -> io::Result<Vec<UdpSocket>> {
    fds.into_iter()
        .map(|fd| {
            let s = UdpSocket::from(fd);
            // fcntl, not set_nonblocking's ioctl: this also runs under the
            // seccomp filter (a reconfiguration).
            let fl = nix::fcntl::fcntl(&s, nix::fcntl::FcntlArg::F_GETFL)?;
            let fl = nix::fcntl::OFlag::from_bits_retain(fl) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&s, nix::fcntl::FcntlArg::F_SETFL(fl))?;
            Ok(s)
        })
        .collect()
}

impl Forwarder {
    /// Sets up forwarding at start: maps the in-flight table.
    pub fn open(queue: u32, spec: ForwardSpec, fds: ForwardFds) -> Result<Forwarder, ForwardError> {
        let fd = fds.table.as_ref().ok_or(ForwardError::NoTable)?;
        let table = Table::open(fd.as_fd(), spec.regions, spec.max_in_flight)?;
        let alloc = table.allocator(queue);
        Forwarder::with_table(queue, spec, fds, table, alloc)
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
        if fds.backends.len() != spec.backends.len() {
            return Err(ForwardError::Sockets {
                got: fds.backends.len(),
                want: spec.backends.len(),
            });
        }
        let backend_keys = spec
            .backends
            .iter()
            .map(|b| (b.address.is_ipv6(), ip16(b.address.ip()), b.address.port()))
            .collect();
        Ok(Forwarder {
            queue,
            table,
            alloc,
            spec,
            backend_socks: udp(fds.backends)?,
            port_socks: udp(fds.ports)?,
            backend_keys,
            buf: vec![0u8; 65536].into_boxed_slice(),
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
        Forwarder::with_table(self.queue, spec, fds, self.table, self.alloc)
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
    fn insert(
        &mut self,
        entry: &Entry,
        backends: &mut Backends,
        c: &mut DataplaneCounters,
    ) -> Option<u16> {
        let ins = self.table.insert(&mut self.alloc, entry)?;
        if let Some(tag) = ins.evicted {
            c.forward.evicted += 1;
            // A backend removed by a reload since has no counters left.
            if let Some(bi) = backends.index_of(tag) {
                c.backend(bi).timeouts += 1;
                backends.done(bi as u16);
            }
        }
        Some(ins.id)
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
        backend: u16,
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
        );
        let Some(id) = self.insert(&entry, backends, c) else {
            return Sent::Failed(FailAction::ServFail);
        };
        chunk[at..at + 2].copy_from_slice(&id.to_be_bytes());
        let bi = usize::from(backend);
        c.backend(bi).queries += 1;
        backends.sent(backend);
        let spec = &self.spec.backends[bi];
        if let (true, Some(mac)) = (spec.xsk, backends.live(backend).and_then(|l| l.mac)) {
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
                return Sent::Frame {
                    head: start,
                    len: at + len - start,
                };
            }
        }
        if self.backend_socks[bi].send(&chunk[at..at + len]).is_err() {
            c.forward.send_errors += 1;
        }
        Sent::Socket
    }

    /// Forwards a query that arrived on a kernel-path socket (`local`) from
    /// `from` to `backend`; the reply comes back through [`Forwarder::poll`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_datagram(
        &mut self,
        msg: &mut [u8],
        q: &Query,
        backend: u16,
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
        let entry = self.entry(backend, client, &msg[HEADER_LEN..q.question_end]);
        let Some(id) = self.insert(&entry, backends, c) else {
            return Err(FailAction::ServFail);
        };
        msg[0..2].copy_from_slice(&id.to_be_bytes());
        let bi = usize::from(backend);
        c.backend(bi).queries += 1;
        backends.sent(backend);
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
        backends: &mut Backends,
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
                    backends.done(backend);
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

    /// A reply that arrived over AF_XDP (its destination is the forwarding
    /// port of queue `owner`): rewritten in place to the client, or sent
    /// through the kernel path if the client came that way.
    #[allow(clippy::too_many_arguments)]
    pub fn reply_frame(
        &mut self,
        chunk: &mut [u8],
        head: usize,
        p: &Parsed,
        owner: u32,
        backends: &mut Backends,
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
        let Some(e) = self.claim(owner, b, &mut chunk[at..at + len], backends, c) else {
            return Fate::Recycle;
        };
        let cl = e.client;
        if cl.xsk {
            let h = client_headers(&cl, self.spec.local_mac);
            if let Some(start) = frame::write_headers(chunk, at, len, &h) {
                return Fate::Transmit {
                    head: start,
                    len: at + len - start,
                };
            }
        }
        emit.kernel(
            sockaddr(cl.v6, &cl.local_ip, cl.local_port),
            sockaddr(cl.v6, &cl.ip, cl.port),
            &chunk[at..at + len],
        );
        Fate::Recycle
    }

    /// Reads replies waiting on the backend and port-reserving sockets and
    /// delivers them. Returns how many were read.
    pub fn poll(
        &mut self,
        backends: &mut Backends,
        c: &mut DataplaneCounters,
        emit: &mut dyn Emit,
    ) -> usize {
        let mut n = 0;
        for b in 0..self.backend_socks.len() {
            for _ in 0..64 {
                let Ok(len) = self.backend_socks[b].recv(&mut self.buf) else {
                    break;
                };
                n += 1;
                self.reply_datagram(b as u16, len, false, backends, c, emit);
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
                        self.reply_datagram(b as u16, len, true, backends, c, emit);
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
        backends: &mut Backends,
        c: &mut DataplaneCounters,
        emit: &mut dyn Emit,
    ) {
        let mut buf = std::mem::take(&mut self.buf);
        if let Some(e) = self.claim(self.queue, backend, &mut buf[..len], backends, c) {
            let cl = e.client;
            let payload = &buf[..len];
            let framed = cl.xsk
                && !via_kernel
                && emit.frame(&client_headers(&cl, self.spec.local_mac), payload);
            if !framed {
                emit.kernel(
                    sockaddr(cl.v6, &cl.local_ip, cl.local_port),
                    sockaddr(cl.v6, &cl.ip, cl.port),
                    payload,
                );
            }
        }
        self.buf = buf;
    }

    /// Frees this queue's expired slots; per `timeout_action`, answers
    /// their clients (with the answer writer every local answer uses).
    /// Returns how many expired.
    pub fn expire(
        &mut self,
        backends: &mut Backends,
        c: &mut DataplaneCounters,
        udp_size: u16,
        emit: &mut dyn Emit,
    ) -> usize {
        let now_ms = monotonic_ns() / 1_000_000;
        let action = self.spec.timeout_action;
        let local_mac = self.spec.local_mac;
        self.table.expire(self.queue, now_ms, |e| {
            if let Some(bi) = backends.index_of(e.backend) {
                c.backend(bi).timeouts += 1;
                backends.done(bi as u16);
            }
            let Some(rcode) = action.rcode() else {
                return;
            };
            let cl = e.client;
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
