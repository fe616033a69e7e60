//! Datagrams read from one socket with one `recvmmsg`: the buffers and the C
//! headers pointing at them, allocated and wired once, behind a safe API.
//!
//! Invariants the unsafe code relies on: every header's iovec points at its
//! own buffer of `buf_len` bytes, all owned by the batch's boxes (their heap
//! memory never moves, whatever happens to the batch itself), and nothing
//! else writes the headers while the kernel fills them.

use std::io;
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
    /// How many datagrams the last receive filled in.
    filled: usize,
}

impl Default for RecvBatch {
    /// An empty batch, without allocating: a placeholder while the real one
    /// is lent out.
    fn default() -> Self {
        RecvBatch::new(0, 0)
    }
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point only into this batch's
// own boxes, which move with it; nothing is shared with another thread.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `capacity` buffers of `buf_len` bytes (none when either is zero: such
    /// a batch receives nothing and allocates nothing).
    pub fn new(capacity: usize, buf_len: usize) -> Self {
        let capacity = if buf_len == 0 { 0 } else { capacity };
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
        let hdrs = (0..capacity)
            .map(|i| {
                // SAFETY: mmsghdr is a plain C struct; all-zero bytes are a
                // valid, empty value (no name, no control data).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov_base.wrapping_add(i);
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        RecvBatch {
            bufs,
            buf_len,
            iovs,
            hdrs,
            filled: 0,
        }
    }

    /// How many datagrams one call can take.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Reads up to `max` (at most the capacity) datagrams waiting on `fd`
    /// without blocking: how many arrived (0 when none waits).
    pub fn receive(&mut self, fd: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        self.filled = 0;
        let max = max.min(self.capacity()).min(libc::c_uint::MAX as usize);
        if max == 0 {
            return Ok(0);
        }
        debug_assert_eq!(self.iovs.len(), self.hdrs.len());
        // SAFETY: the first `max` headers each point at one iovec of this
        // batch, which points at its own `buf_len`-byte buffer (module
        // invariants); the kernel writes within those and the headers'
        // `msg_len`/`msg_flags` only. `fd` is a live descriptor.
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
    fn a_descriptor_that_is_not_a_socket_is_an_error() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut batch = RecvBatch::new(2, 16);
        assert!(batch.receive(f.as_fd(), 2).is_err());
    }
}
