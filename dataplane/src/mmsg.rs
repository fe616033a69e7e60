//! Datagrams read from one socket with one `recvmmsg`, and answers to them
//! sent back in place with one `sendmmsg`: the buffers, source addresses and
//! the C headers pointing at them, allocated and wired once, behind a safe
//! API. The only module of the dataplane that builds `mmsghdr`s.
//!
//! Invariants the unsafe code relies on: every receive header's iovec points
//! at its own buffer of `buf_len` bytes and, in a batch made
//! [`with_sources`](RecvBatch::with_sources), its name at its own
//! `sockaddr_storage` (and, made
//! [`with_destinations`](RecvBatch::with_destinations), its control buffer at
//! its own [`Control`]); every queued answer's header points into those same
//! buffers and names, within the buffer's `buf_len` bytes. All of them are
//! owned by the batch's boxes (their heap memory never moves, whatever
//! happens to the batch itself), and nothing else writes the headers while
//! the kernel reads or fills them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// One received datagram, as [`RecvBatch::datagram`] gives it.
pub enum Received<'a> {
    /// Its bytes, which the caller may rewrite in place.
    Whole(&'a mut [u8]),
    /// It was longer than a buffer: the kernel dropped the rest.
    Truncated,
}

/// Buffers for up to `capacity` datagrams per call.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    buf_len: usize,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// The senders' addresses: one per buffer, or none at all (a batch for
    /// connected sockets, which neither needs nor answers them).
    names: Box<[libc::sockaddr_storage]>,
    /// Control messages (the original destination): one per buffer, or
    /// none at all.
    controls: Box<[Control]>,
    /// Answers queued by [`answer`](RecvBatch::answer): headers pointing at
    /// a received buffer and its sender (as many as `names`).
    out_iovs: Box<[libc::iovec]>,
    out_hdrs: Box<[libc::mmsghdr]>,
    /// How many answers are queued.
    answers: usize,
    /// How many datagrams the last receive filled in.
    filled: usize,
}

/// What [`RecvBatch::send_answers`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Answers the kernel took.
    pub sent: usize,
    /// Answers lost to a send error (each tried once).
    pub failed: usize,
}

/// `n` zeroed C structs.
fn zeroed<T: Plain>(n: usize) -> Box<[T]> {
    // SAFETY: `Plain` is implemented only for C structs (iovec, mmsghdr,
    // sockaddr_storage) for which all-zero bytes are a valid, empty value
    // (null pointers, zero lengths, family AF_UNSPEC).
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// C structs that may be zero-initialised.
trait Plain {}
impl Plain for libc::iovec {}
impl Plain for libc::mmsghdr {}
impl Plain for libc::sockaddr_storage {}
impl Plain for Control {}

/// Room for the control messages of one datagram: IP_ORIGDSTADDR or
/// IPV6_ORIGDSTADDR (a header and a sockaddr_in6: 44 bytes), aligned as a
/// `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

const CONTROL_LEN: usize = 64;

/// The original destination in the control messages `buf` (the bytes the
/// kernel wrote), parsed without trusting a length beyond `buf`.
fn original_destination(buf: &[u8]) -> Option<SocketAddr> {
    const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
    const ALIGN: usize = std::mem::size_of::<usize>();
    let mut at = 0;
    while at + HDR <= buf.len() {
        let len = usize::from_ne_bytes(buf[at..at + ALIGN].try_into().ok()?);
        let level = i32::from_ne_bytes(buf[at + ALIGN..at + ALIGN + 4].try_into().ok()?);
        let ty = i32::from_ne_bytes(buf[at + ALIGN + 4..at + ALIGN + 8].try_into().ok()?);
        if len < HDR || len > buf.len() - at {
            return None;
        }
        let data = &buf[at + HDR..at + len];
        let port = |d: &[u8]| u16::from_be_bytes([d[2], d[3]]);
        match (level, ty) {
            (libc::SOL_IP, libc::IP_ORIGDSTADDR) if data.len() >= 8 => {
                let ip: [u8; 4] = data[4..8].try_into().ok()?;
                return Some(SocketAddr::from((ip, port(data))));
            }
            (libc::SOL_IPV6, libc::IPV6_ORIGDSTADDR) if data.len() >= 24 => {
                let ip: [u8; 16] = data[8..24].try_into().ok()?;
                return Some(SocketAddr::from((ip, port(data))));
            }
            _ => {}
        }
        at += len.div_ceil(ALIGN) * ALIGN;
    }
    None
}

/// The address in a `sockaddr_storage` the kernel filled in, if it is one
/// of the two families a UDP socket receives from.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it holds a sockaddr_in, which fits in a
            // sockaddr_storage and needs no stricter alignment.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

impl Default for RecvBatch {
    /// An empty batch, without allocating: a placeholder while the real one
    /// is lent out.
    fn default() -> Self {
        RecvBatch::new(0, 0)
    }
}

// SAFETY: the raw pointers in `iovs`, `hdrs`, `out_iovs` and `out_hdrs` point
// only into this batch's own boxes, which move with it; nothing is shared with
// another thread.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `capacity` buffers of `buf_len` bytes (none when either is zero: such
    /// a batch receives nothing and allocates nothing).
    pub fn new(capacity: usize, buf_len: usize) -> Self {
        Self::build(capacity, buf_len, false, false)
    }

    /// As [`new`](RecvBatch::new), also keeping each datagram's source
    /// address ([`source`](RecvBatch::source)) so that it can be answered
    /// ([`answer`](RecvBatch::answer)).
    pub fn with_sources(capacity: usize, buf_len: usize) -> Self {
        Self::build(capacity, buf_len, true, false)
    }

    /// As [`with_sources`](RecvBatch::with_sources), also keeping each
    /// datagram's original destination
    /// ([`destination`](RecvBatch::destination)), which a socket with
    /// IP(V6)_RECVORIGDSTADDR reports.
    pub fn with_destinations(capacity: usize, buf_len: usize) -> Self {
        Self::build(capacity, buf_len, true, true)
    }

    fn build(capacity: usize, buf_len: usize, sources: bool, destinations: bool) -> Self {
        let capacity = if buf_len == 0 { 0 } else { capacity };
        let named = if sources { capacity } else { 0 };
        let mut names: Box<[libc::sockaddr_storage]> = zeroed(named);
        let name_base = names.as_mut_ptr();
        let mut controls: Box<[Control]> = zeroed(if destinations { capacity } else { 0 });
        let control_base = controls.as_mut_ptr();
        let mut bufs = vec![0u8; capacity * buf_len].into_boxed_slice();
        let base = bufs.as_mut_ptr();
        let mut iovs: Box<[libc::iovec]> = (0..capacity)
            .map(|i| libc::iovec {
                // In bounds: i * buf_len + buf_len <= bufs.len().
                iov_base: base.wrapping_add(i * buf_len).cast(),
                iov_len: buf_len,
            })
            .collect();
        let iov_base = iovs.as_mut_ptr();
        let mut hdrs: Box<[libc::mmsghdr]> = zeroed(capacity);
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_iov = iov_base.wrapping_add(i);
            h.msg_hdr.msg_iovlen = 1;
            if sources {
                h.msg_hdr.msg_name = name_base.wrapping_add(i).cast();
            }
            if destinations {
                h.msg_hdr.msg_control = control_base.wrapping_add(i).cast();
            }
        }
        RecvBatch {
            bufs,
            buf_len,
            iovs,
            hdrs,
            names,
            controls,
            out_iovs: zeroed(named),
            out_hdrs: zeroed(named),
            answers: 0,
            filled: 0,
        }
    }

    /// How many datagrams one call can take.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Reads up to `max` (at most the capacity) datagrams waiting on `fd`
    /// without blocking: how many arrived (0 when none waits).
    /// Answers queued for the previous receive and not sent are dropped.
    pub fn receive(&mut self, fd: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        self.filled = 0;
        self.answers = 0;
        let max = max.min(self.capacity()).min(libc::c_uint::MAX as usize);
        if max == 0 {
            return Ok(0);
        }
        debug_assert_eq!(self.iovs.len(), self.hdrs.len());
        if !self.names.is_empty() {
            // The kernel writes back how much of each name it filled.
            for h in &mut self.hdrs[..max] {
                h.msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
        }
        if !self.controls.is_empty() {
            // And how much of each control buffer.
            for h in &mut self.hdrs[..max] {
                h.msg_hdr.msg_controllen = CONTROL_LEN as _;
            }
        }
        // SAFETY: the first `max` headers each point at one iovec of this
        // batch, which points at its own `buf_len`-byte buffer, and at their
        // own `sockaddr_storage` with its true size or at no name (module
        // invariants), and at their own `Control` of CONTROL_LEN bytes or at
        // none; the kernel writes within those and the headers'
        // `msg_len`/`msg_flags`/`msg_namelen`/`msg_controllen` only. `fd` is a live descriptor.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                max as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.filled = (n as usize).min(max);
        Ok(self.filled)
    }

    /// Datagram `i` of the last receive, or `None` past what it filled.
    pub fn datagram(&mut self, i: usize) -> Option<Received<'_>> {
        if i >= self.filled {
            return None;
        }
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return Some(Received::Truncated);
        }
        let len = (h.msg_len as usize).min(self.buf_len);
        let start = i * self.buf_len;
        Some(Received::Whole(&mut self.bufs[start..start + len]))
    }

    /// Datagram `i`'s whole buffer (`buf_len` bytes, room to write an answer
    /// longer than the datagram in place) and the datagram's length; `None`
    /// past what the last receive filled or when the datagram was truncated.
    pub fn room(&mut self, i: usize) -> Option<(&mut [u8], usize)> {
        let len = match self.datagram(i)? {
            Received::Whole(d) => d.len(),
            Received::Truncated => return None,
        };
        let start = i * self.buf_len;
        Some((&mut self.bufs[start..start + self.buf_len], len))
    }

    /// Where datagram `i` came from: `None` past what the last receive
    /// filled, in a batch without sources, or for a family other than IPv4
    /// and IPv6.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.filled {
            return None;
        }
        socket_addr(self.names.get(i)?)
    }

    /// Where datagram `i` was sent (its original destination address and
    /// port): `None` past what the last receive filled, in a batch without
    /// destinations, or when the socket reported none.
    pub fn destination(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.filled {
            return None;
        }
        let c = self.controls.get(i)?;
        let h = &self.hdrs[i].msg_hdr;
        if h.msg_flags & libc::MSG_CTRUNC != 0 {
            return None;
        }
        let len = h.msg_controllen.min(CONTROL_LEN);
        original_destination(&c.0[..len])
    }

    /// Queues the first `len` bytes of datagram `i`'s buffer (written by the
    /// caller through [`room`](RecvBatch::room)) as an answer to its source
    /// (the name the kernel wrote, which the caller has read through
    /// [`source`](RecvBatch::source)), for
    /// [`send_answers`](RecvBatch::send_answers). False, and nothing queued,
    /// when `i` is past what the last receive filled, the batch keeps no
    /// sources, `len` exceeds the buffer, or as many answers as buffers are
    /// queued already.
    pub fn answer(&mut self, i: usize, len: usize) -> bool {
        if i >= self.filled
            || i >= self.names.len()
            || len > self.buf_len
            || self.answers >= self.out_hdrs.len()
        {
            return false;
        }
        let k = self.answers;
        self.out_iovs[k] = libc::iovec {
            // In bounds: i < filled <= capacity, so the buffer lies in `bufs`.
            iov_base: self.bufs.as_mut_ptr().wrapping_add(i * self.buf_len).cast(),
            iov_len: len,
        };
        let out_iov = self.out_iovs.as_mut_ptr().wrapping_add(k);
        let name = self.names.as_mut_ptr().wrapping_add(i);
        let h = &mut self.out_hdrs[k].msg_hdr;
        h.msg_name = name.cast();
        h.msg_namelen = self.hdrs[i].msg_hdr.msg_namelen;
        h.msg_iov = out_iov;
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        self.answers += 1;
        true
    }

    /// Sends every queued answer on `fd` without blocking, as few
    /// `sendmmsg` calls as the kernel allows; an answer the kernel refuses is
    /// counted failed and the rest are still tried. The queue is empty after.
    pub fn send_answers(&mut self, fd: BorrowedFd<'_>) -> Sent {
        let out = std::mem::take(&mut self.answers);
        let mut done = Sent::default();
        let mut at = 0;
        while at < out {
            let left = (out - at).min(libc::c_uint::MAX as usize);
            // SAFETY: headers [at, out) were filled by `answer` since the last
            // receive: each points at one out-iovec of this batch, over the
            // start of a received buffer, and at that buffer's name with the
            // length the kernel wrote (module invariants); the kernel only
            // reads them and writes `msg_len`. `fd` is a live descriptor.
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.out_hdrs.as_mut_ptr().wrapping_add(at),
                    left as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                let r = (r as usize).min(left);
                done.sent += r;
                at += r;
                continue;
            }
            if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // sendmmsg reports an error only for the first message it could
            // not send: that one is lost (counted), the rest are tried.
            done.failed += 1;
            at += 1;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        (a, b)
    }

    #[test]
    fn an_empty_socket_gives_nothing_without_blocking() {
        let (a, _b) = pair();
        let mut batch = RecvBatch::new(4, 64);
        assert_eq!(batch.receive(a.as_fd(), 4).unwrap(), 0);
        assert!(batch.datagram(0).is_none());
    }

    #[test]
    fn waiting_datagrams_arrive_in_one_call_up_to_the_limit() {
        let (a, b) = pair();
        for i in 0..5u8 {
            b.send(&vec![i; usize::from(i) + 1]).unwrap();
        }
        let mut batch = RecvBatch::new(4, 64);
        assert_eq!(batch.receive(a.as_fd(), 3).unwrap(), 3);
        for i in 0..3u8 {
            match batch.datagram(usize::from(i)) {
                Some(Received::Whole(d)) => assert_eq!(*d, vec![i; usize::from(i) + 1]),
                _ => panic!("datagram {i} missing"),
            }
        }
        assert!(batch.datagram(3).is_none());
        // The rest waits for the next call; the capacity bounds a large max.
        assert_eq!(batch.receive(a.as_fd(), 100).unwrap(), 2);
        assert!(matches!(batch.datagram(1), Some(Received::Whole(d)) if *d == [4u8; 5]));
        assert_eq!(batch.receive(a.as_fd(), 0).unwrap(), 0);
        // An empty batch leaves what waits where it is.
        b.send(b"x").unwrap();
        assert_eq!(RecvBatch::default().receive(a.as_fd(), 8).unwrap(), 0);
        assert_eq!(batch.receive(a.as_fd(), 8).unwrap(), 1);
    }

    #[test]
    fn a_pending_socket_error_is_returned_and_cleared() {
        // A port nobody listens on: the kernel answers port unreachable,
        // which a connected socket keeps as its pending error.
        let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = gone.local_addr().unwrap();
        drop(gone);
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(dead).unwrap();
        s.send(b"x").unwrap();
        let mut batch = RecvBatch::new(2, 16);
        let e = batch.receive(s.as_fd(), 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(batch.receive(s.as_fd(), 2).unwrap(), 0, "cleared");
        assert!(batch.datagram(0).is_none());
    }

    #[test]
    fn a_datagram_longer_than_a_buffer_is_reported_truncated() {
        let (a, b) = pair();
        b.send(&[7u8; 100]).unwrap();
        b.send(&[8u8; 16]).unwrap();
        let mut batch = RecvBatch::new(2, 16);
        assert_eq!(batch.receive(a.as_fd(), 2).unwrap(), 2);
        assert!(matches!(batch.datagram(0), Some(Received::Truncated)));
        assert!(matches!(batch.datagram(1), Some(Received::Whole(d)) if d == [8u8; 16]));
    }

    #[test]
    fn answers_go_back_to_each_source_in_one_call() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let clients: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(&[i as u8; 4], server.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = RecvBatch::with_sources(4, 64);
        assert_eq!(batch.receive(server.as_fd(), 4).unwrap(), 3);
        for (i, c) in clients.iter().enumerate() {
            assert_eq!(batch.source(i), Some(c.local_addr().unwrap()));
            let (buf, len) = batch.room(i).unwrap();
            assert_eq!((buf.len(), len, buf[0]), (64, 4, i as u8));
            // An answer longer than the question, written in place.
            buf[..10].fill(0xa0 + i as u8);
        }
        assert!(batch.source(3).is_none() && batch.room(3).is_none());
        // Only the first and the last are answered; refusals queue nothing.
        assert!(batch.answer(0, 10));
        assert!(!batch.answer(1, 65), "longer than the buffer");
        assert!(!batch.answer(3, 1), "past what was received");
        assert!(batch.answer(2, 10));
        assert_eq!(
            batch.send_answers(server.as_fd()),
            Sent { sent: 2, failed: 0 }
        );
        let mut got = [0u8; 64];
        for (i, c) in clients.iter().enumerate() {
            c.set_nonblocking(true).unwrap();
            match c.recv(&mut got) {
                Ok(n) if i != 1 => assert_eq!(&got[..n], &[0xa0 + i as u8; 10]),
                Err(e) if i == 1 => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                other => panic!("client {i}: {other:?}"),
            }
        }
        // The queue is empty after sending, and a new receive drops what was
        // queued and not sent.
        assert_eq!(batch.send_answers(server.as_fd()), Sent::default());
        clients[0]
            .send_to(b"q", server.local_addr().unwrap())
            .unwrap();
        clients[1]
            .send_to(b"q", server.local_addr().unwrap())
            .unwrap();
        assert_eq!(batch.receive(server.as_fd(), 1).unwrap(), 1);
        assert!(batch.answer(0, 1));
        assert_eq!(batch.receive(server.as_fd(), 4).unwrap(), 1);
        assert_eq!(batch.send_answers(server.as_fd()), Sent::default());
    }

    #[test]
    fn a_batch_without_sources_answers_nothing() {
        let (a, b) = pair();
        b.send(b"hello").unwrap();
        let mut batch = RecvBatch::new(2, 16);
        assert_eq!(batch.receive(a.as_fd(), 2).unwrap(), 1);
        assert!(batch.source(0).is_none());
        assert_eq!(
            batch.room(0).map(|(buf, len)| (buf.len(), len)),
            Some((16, 5))
        );
        assert!(!batch.answer(0, 5));
        assert_eq!(batch.send_answers(a.as_fd()), Sent::default());
    }

    #[test]
    fn a_truncated_datagram_has_no_room() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(&[1u8; 40], server.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::with_sources(1, 16);
        assert_eq!(batch.receive(server.as_fd(), 1).unwrap(), 1);
        assert!(batch.room(0).is_none());
        assert_eq!(batch.source(0), Some(c.local_addr().unwrap()));
    }

    #[test]
    fn answers_over_ipv6_keep_the_address() {
        let server = UdpSocket::bind("[::1]:0").unwrap();
        let c = UdpSocket::bind("[::1]:0").unwrap();
        c.send_to(b"six", server.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::with_sources(2, 16);
        assert_eq!(batch.receive(server.as_fd(), 2).unwrap(), 1);
        assert_eq!(batch.source(0), Some(c.local_addr().unwrap()));
        assert!(batch.answer(0, 3));
        assert_eq!(batch.send_answers(server.as_fd()).sent, 1);
        let mut got = [0u8; 8];
        assert_eq!(c.recv(&mut got).unwrap(), 3);
        assert_eq!(&got[..3], b"six");
    }

    #[test]
    fn a_descriptor_that_is_not_a_socket_is_an_error() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut batch = RecvBatch::new(2, 16);
        assert!(batch.receive(f.as_fd(), 2).is_err());
    }

    fn orig_dst(s: &UdpSocket) {
        use nix::sys::socket::{setsockopt, sockopt};
        if s.local_addr().unwrap().is_ipv6() {
            setsockopt(s, sockopt::Ipv6OrigDstAddr, &true).unwrap();
        } else {
            setsockopt(s, sockopt::Ipv4OrigDstAddr, &true).unwrap();
        }
    }

    #[test]
    fn each_datagram_reports_where_it_was_sent() {
        for at in ["127.0.0.1:0", "[::1]:0"] {
            let rx = UdpSocket::bind(at).unwrap();
            orig_dst(&rx);
            let tx = UdpSocket::bind(at).unwrap();
            let to = rx.local_addr().unwrap();
            tx.send_to(b"one", to).unwrap();
            tx.send_to(b"two", to).unwrap();
            let mut batch = RecvBatch::with_destinations(4, 64);
            assert_eq!(batch.receive(rx.as_fd(), 4).unwrap(), 2);
            for i in 0..2 {
                assert_eq!(batch.destination(i), Some(to), "{at}");
                assert_eq!(batch.source(i), Some(tx.local_addr().unwrap()));
            }
            assert_eq!(batch.destination(2), None);
        }
    }

    #[test]
    fn a_batch_without_destinations_or_a_socket_without_the_option_reports_none() {
        let (a, b) = pair();
        b.send(b"x").unwrap();
        let mut batch = RecvBatch::with_sources(2, 64);
        assert_eq!(batch.receive(a.as_fd(), 2).unwrap(), 1);
        assert_eq!(batch.destination(0), None);
        b.send(b"x").unwrap();
        let mut batch = RecvBatch::with_destinations(2, 64);
        assert_eq!(batch.receive(a.as_fd(), 2).unwrap(), 1);
        assert_eq!(batch.source(0), Some(b.local_addr().unwrap()));
        assert_eq!(batch.destination(0), None);
    }

    /// A control message as the kernel lays it out on 64-bit Linux.
    fn cmsg(level: i32, ty: i32, data: &[u8], len: Option<usize>) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.unwrap_or(16 + data.len()).to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while v.len() % 8 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn control_messages_are_parsed_within_their_bytes() {
        let sin = [2, 0, 0x12, 0x34, 192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0];
        let good = cmsg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sin, None);
        assert_eq!(
            original_destination(&good),
            Some("192.0.2.7:4660".parse().unwrap())
        );
        // Another message first is skipped.
        let mut two = cmsg(libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[0; 16], None);
        two.extend_from_slice(&good);
        assert_eq!(original_destination(&two), original_destination(&good));
        // A length past the buffer, under the header, or a short address.
        let long = cmsg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sin, Some(200));
        assert_eq!(original_destination(&long), None);
        let zero = cmsg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sin, Some(0));
        assert_eq!(original_destination(&zero), None);
        let short = cmsg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sin[..6], None);
        assert_eq!(original_destination(&short), None);
        assert_eq!(original_destination(&good[..20]), None);
        assert_eq!(original_destination(&[]), None);
    }
}
