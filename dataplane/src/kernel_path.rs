//! The kernel-stack path: UDP sockets the loader bound (SO_REUSEPORT, one per
//! dataplane per listen address), served in batches with recvmmsg/sendmmsg;
//! each datagram's fate is decided by [`Engine::datagram`], the same
//! pipeline as AF_XDP frames. Queries reach these sockets when a queue has
//! no AF_XDP socket, or for frames the XDP program passes on.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use xdpdns_common::stats::{DataplaneCounters, DropReason};

use crate::engine::{Datagram, Engine};
use crate::mmsg::RecvBatch;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest query accepted; longer datagrams are dropped as truncated.
const BUF_LEN: usize = 4096;

/// The dataplane's kernel-path sockets.
pub struct KernelPath {
    sockets: Vec<OwnedFd>,
    /// The local address of each socket.
    addrs: Vec<SocketAddr>,
    batch: RecvBatch,
}

/// Kernel-path sockets are moved to descriptors at or above this.
///
/// When a dataplane dies, the kernel closes its descriptors in ascending order
/// but runs the deferred releases last-in first-out, so the highest descriptor
/// is released first. Releasing the AF_XDP socket empties its XSKMAP slot and
/// then waits out an RCU grace period; queries that take the kernel path in
/// that window would be hashed onto this process's reuseport sockets if they
/// were still open, and lost with them. Above the AF_XDP socket's descriptor,
/// they leave the reuseport group first.
const HIGH_FD: libc::c_int = 64;

impl KernelPath {
    /// Takes the sockets (bound to `addrs`, in order), moving each to a
    /// descriptor above every AF_XDP one.
    pub fn new(sockets: Vec<OwnedFd>, addrs: Vec<SocketAddr>) -> Self {
        let sockets = sockets
            .into_iter()
            .map(
                |s| match nix::fcntl::fcntl(&s, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(HIGH_FD)) {
                    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor nobody else owns.
                    Ok(high) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) },
                    Err(_) => s,
                },
            )
            .collect();
        KernelPath {
            sockets,
            addrs,
            batch: RecvBatch::with_sources(BATCH, BUF_LEN),
        }
    }

    /// Sends `payload` to `to` from the socket bound to `local`; false if
    /// there is none or the send fails.
    pub fn send_to(&self, local: SocketAddr, to: SocketAddr, payload: &[u8]) -> bool {
        let Some(i) = self.addrs.iter().position(|a| *a == local) else {
            return false;
        };
        let addr = nix::sys::socket::SockaddrStorage::from(to);
        nix::sys::socket::sendto(
            self.sockets[i].as_raw_fd(),
            payload,
            &addr,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .is_ok()
    }

    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.sockets.iter().map(|s| s.as_fd())
    }

    /// Watches every socket (tokens `Kernel(i)`).
    pub fn watch(&self, poller: &crate::poller::Poller) -> io::Result<()> {
        for (i, s) in self.sockets.iter().enumerate() {
            poller.add(s.as_fd(), crate::poller::Token::Kernel(i as u32))?;
        }
        Ok(())
    }

    /// Answers what waits on socket `i`, at most `rounds` batches.
    pub fn serve_one(
        &mut self,
        i: u32,
        engine: &mut Engine,
        counters: &mut DataplaneCounters,
        rounds: usize,
    ) -> usize {
        let (Some(s), Some(local)) = (self.sockets.get(i as usize), self.addrs.get(i as usize))
        else {
            return 0;
        };
        let (fd, local) = (s.as_fd(), *local);
        let mut total = 0;
        for _ in 0..rounds {
            let n = serve_once(fd, local, &mut self.batch, engine, counters);
            total += n;
            if n < BATCH {
                break;
            }
        }
        total
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Answers what is waiting on every socket, at most `rounds` batches each.
    /// Returns the number of datagrams received.
    pub fn serve(
        &mut self,
        engine: &mut Engine,
        counters: &mut DataplaneCounters,
        rounds: usize,
    ) -> usize {
        let mut total = 0;
        for i in 0..self.sockets.len() {
            let Some(local) = self.addrs.get(i).copied() else {
                continue;
            };
            for _ in 0..rounds {
                let fd = self.sockets[i].as_fd();
                let n = serve_once(fd, local, &mut self.batch, engine, counters);
                total += n;
                if n < BATCH {
                    break;
                }
            }
        }
        total
    }
}

/// One recvmmsg round on `fd` and one sendmmsg of its answers: how many
/// datagrams arrived.
fn serve_once(
    fd: BorrowedFd<'_>,
    local: SocketAddr,
    b: &mut RecvBatch,
    engine: &mut Engine,
    counters: &mut DataplaneCounters,
) -> usize {
    // An error other than "nothing waits" (the socket is the loader's, bound
    // and checked) leaves the datagrams where they are, for the next round.
    let n = b.receive(fd, BATCH).unwrap_or(0);
    if n == 0 {
        return 0;
    }
    counters.kernel.received += n as u64;
    for i in 0..n {
        let from = b.source(i);
        let Some((buf, len)) = b.room(i) else {
            counters.kernel.drop(DropReason::DnsTruncated);
            continue;
        };
        let Some(from) = from else {
            counters.kernel.drop(DropReason::BadSource);
            continue;
        };
        if let Datagram::Answer(alen) = engine.datagram(buf, len, from, local, counters) {
            // i has a source and there is one answer per datagram, so only an
            // answer longer than its buffer (which the engine never writes)
            // is refused: counted as lost, not sent.
            if !b.answer(i, alen) {
                counters.kernel_send_errors += 1;
            }
        }
    }
    let sent = b.send_answers(fd);
    counters.kernel.answered += sent.sent as u64;
    counters.kernel_send_errors += sent.failed as u64;
    n
}
