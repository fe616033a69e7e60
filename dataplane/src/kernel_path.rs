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

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest query accepted; longer datagrams are dropped as truncated.
const BUF_LEN: usize = 4096;

/// Buffers and headers for one recvmmsg/sendmmsg round, allocated once.
struct Batch {
    bufs: Box<[[u8; BUF_LEN]]>,
    names: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    out_iovs: Box<[libc::iovec]>,
    out_hdrs: Box<[libc::mmsghdr]>,
}

impl Batch {
    fn new() -> Self {
        Batch {
            bufs: vec![[0u8; BUF_LEN]; BATCH].into_boxed_slice(),
            names: zeroed_slice(),
            iovs: zeroed_slice(),
            hdrs: zeroed_slice(),
            out_iovs: zeroed_slice(),
            out_hdrs: zeroed_slice(),
        }
    }

    /// Points every receive header at its buffer and address slot.
    fn arm_receive(&mut self) {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
    }
}

/// `BATCH` zeroed C structs.
fn zeroed_slice<T>() -> Box<[T]> {
    // SAFETY: only used for sockaddr_storage, iovec and mmsghdr: plain C
    // structs for which all-zero bytes are a valid (empty) value.
    (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// The dataplane's kernel-path sockets.
pub struct KernelPath {
    sockets: Vec<OwnedFd>,
    /// The local address of each socket.
    addrs: Vec<SocketAddr>,
    batch: Batch,
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
            batch: Batch::new(),
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
        let (fd, local) = (s.as_raw_fd(), *local);
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
                let fd = self.sockets[i].as_raw_fd();
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

/// The address in a `sockaddr_storage` the kernel filled in.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it holds a sockaddr_in, which fits.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it holds a sockaddr_in6, which fits.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

fn serve_once(
    fd: libc::c_int,
    local: SocketAddr,
    b: &mut Batch,
    engine: &mut Engine,
    counters: &mut DataplaneCounters,
) -> usize {
    b.arm_receive();
    // SAFETY: every header points at live buffers/address slots owned by `b`
    // with their true sizes; the kernel writes within them.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            b.hdrs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n <= 0 {
        return 0;
    }
    let n = n as usize;
    counters.kernel.received += n as u64;
    let mut out = 0;
    for i in 0..n {
        let len = b.hdrs[i].msg_len as usize;
        if b.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            counters.kernel.drop(DropReason::DnsTruncated);
            continue;
        }
        let Some(from) = socket_addr(&b.names[i]) else {
            counters.kernel.drop(DropReason::BadSource);
            continue;
        };
        let Datagram::Answer(alen) = engine.datagram(&mut b.bufs[i], len, from, local, counters)
        else {
            continue;
        };
        b.out_iovs[out] = libc::iovec {
            iov_base: b.bufs[i].as_mut_ptr().cast(),
            iov_len: alen,
        };
        let h = &mut b.out_hdrs[out].msg_hdr;
        h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = b.hdrs[i].msg_hdr.msg_namelen;
        h.msg_iov = &mut b.out_iovs[out];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        out += 1;
    }
    let mut sent = 0;
    while sent < out {
        // SAFETY: headers [sent, out) point at live buffers and addresses in `b`.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                b.out_hdrs[sent..].as_mut_ptr(),
                (out - sent) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r > 0 {
            sent += r as usize;
            counters.kernel.answered += r as u64;
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // sendmmsg reports an error only for the first message it could not
        // send: that one is lost (counted), the rest of the batch is tried.
        counters.kernel_send_errors += 1;
        sent += 1;
    }
    n
}
