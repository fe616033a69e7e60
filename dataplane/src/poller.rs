//! Readiness of every descriptor the worker waits on — the control socket,
//! kernel-path and backend sockets — from one epoll instance: probing costs
//! one system call however many sockets there are, and only the ready ones
//! are read.
//!
//! The AF_XDP socket is not in that set: a descriptor in an epoll set keeps
//! an entry on its wait queue, and the kernel then runs epoll's callback
//! (a lock with interrupts off, on the CPU that delivers) for every batch it
//! puts in the RX ring, whether or not the worker is asleep. The loop reads
//! its rings without asking, so the AF_XDP socket is watched only while the
//! worker blocks: [`Poller::wait`] with a timeout polls it beside the epoll
//! descriptor (one `ppoll`, whose wait-queue entries live only for the
//! call). Measured on the forwarding bench: the generator's CPU spent ~4 %
//! in that callback with the socket in the set.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Events returned per wait.
const EVENTS: usize = 64;

/// What a descriptor is to the worker (the epoll data word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Xsk,
    Control,
    /// Kernel-path socket `i`.
    Kernel(u32),
    /// Socket `s` of backend `b`.
    Backend(u16, u32),
    /// Receiving socket `i` of steered replies.
    Steered(u32),
}

impl Token {
    fn encode(self) -> u64 {
        match self {
            Token::Xsk => 1 << 56,
            Token::Control => 2 << 56,
            Token::Kernel(i) => (3 << 56) | u64::from(i),
            Token::Backend(b, s) => (4 << 56) | (u64::from(b) << 32) | u64::from(s),
            Token::Steered(i) => (5 << 56) | u64::from(i),
        }
    }

    fn decode(v: u64) -> Option<Token> {
        match v >> 56 {
            1 => Some(Token::Xsk),
            2 => Some(Token::Control),
            3 => Some(Token::Kernel(v as u32)),
            4 => Some(Token::Backend((v >> 32) as u16, v as u32)),
            5 => Some(Token::Steered(v as u32)),
            _ => None,
        }
    }
}

pub struct Poller {
    epoll: OwnedFd,
    events: Box<[libc::epoll_event]>,
    ready: Vec<Token>,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: plain system call, no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: a descriptor we just created and nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS].into_boxed_slice(),
            ready: Vec::with_capacity(EVENTS),
        })
    }

    /// Watches `fd` for input. A closed descriptor leaves the set by itself.
    pub fn add(&self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token.encode(),
        };
        // SAFETY: epoll_ctl reads one live epoll_event.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (zero: just looks at the set) for the set or
    /// for `xsk` (watched during a blocking call only, reported as
    /// [`Token::Xsk`]); the ready descriptors' tokens (without allocating).
    pub fn wait(&mut self, timeout: Duration, xsk: BorrowedFd<'_>) -> &[Token] {
        self.ready.clear();
        if !timeout.is_zero() {
            let (set_ready, xsk_ready) = self.block(timeout, xsk);
            if xsk_ready {
                self.ready.push(Token::Xsk);
            }
            if !set_ready {
                return &self.ready;
            }
        }
        self.collect()
    }

    /// Blocks in `ppoll` on the epoll descriptor and `xsk`: which is ready.
    fn block(&self, timeout: Duration, xsk: BorrowedFd<'_>) -> (bool, bool) {
        let mut fds = [
            libc::pollfd {
                fd: self.epoll.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: xsk.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let t = timeout.min(Duration::from_secs(60));
        let ts = libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the kernel reads and writes the two live pollfds and
        // reads the live timespec; no signal mask is passed.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if n <= 0 {
            // Timeout or EINTR: the caller's loop looks again.
            return (false, false);
        }
        (fds[0].revents != 0, fds[1].revents != 0)
    }

    /// Ready tokens of the set (appended), without waiting.
    fn collect(&mut self) -> &[Token] {
        // SAFETY: the kernel writes at most `events.len()` events into the
        // live buffer.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                0,
            )
        };
        for ev in &self.events[..n.max(0) as usize] {
            if let Some(t) = Token::decode(ev.u64) {
                self.ready.push(t);
            }
        }
        &self.ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn ready_sockets_are_reported_by_token() {
        let mut p = Poller::new().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        p.add(a.as_fd(), Token::Kernel(3)).unwrap();
        p.add(b.as_fd(), Token::Backend(2, 41)).unwrap();
        // Stands in for the AF_XDP socket: watched only while blocking.
        let x = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(
            p.wait(Duration::ZERO, x.as_fd()).is_empty(),
            "nothing ready"
        );
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", b.local_addr().unwrap()).unwrap();
        assert_eq!(
            p.wait(Duration::from_secs(1), x.as_fd()),
            [Token::Backend(2, 41)]
        );
        drop(b);
        tx.send_to(b"y", a.local_addr().unwrap()).unwrap();
        assert_eq!(
            p.wait(Duration::from_secs(1), x.as_fd()),
            [Token::Kernel(3)],
            "a closed socket left the set"
        );
        for t in [
            Token::Xsk,
            Token::Control,
            Token::Kernel(u32::MAX),
            Token::Backend(u16::MAX, 7),
        ] {
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }

    #[test]
    fn the_xsk_is_watched_only_while_blocking() {
        let mut p = Poller::new().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        p.add(a.as_fd(), Token::Kernel(0)).unwrap();
        let x = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", x.local_addr().unwrap()).unwrap();
        // Let the datagram arrive before looking.
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            p.wait(Duration::ZERO, x.as_fd()).is_empty(),
            "not in the set: a look does not see it"
        );
        let t = std::time::Instant::now();
        assert_eq!(p.wait(Duration::from_secs(5), x.as_fd()), [Token::Xsk]);
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "woken by it, not the timeout"
        );
        tx.send_to(b"y", a.local_addr().unwrap()).unwrap();
        let mut got = p.wait(Duration::from_secs(5), x.as_fd()).to_vec();
        got.sort_by_key(|t| t.encode());
        assert_eq!(got, [Token::Xsk, Token::Kernel(0)], "both reported");
        drop(a);
        let t = std::time::Instant::now();
        let mut buf = [0u8; 8];
        x.recv(&mut buf).unwrap();
        assert!(p.wait(Duration::from_millis(50), x.as_fd()).is_empty());
        assert!(t.elapsed() >= Duration::from_millis(40), "the timeout held");
    }
}
