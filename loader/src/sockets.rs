//! Every socket the loader makes, one constructor per kind: [`udp`] (the
//! kernel-path listeners, forwarding's port reservations, backend and
//! health-check sockets), [`tcp_listener`] (the metrics exporter's) and
//! [`tcp_listener_shared`] (the TCP workers'). All are non-blocking and
//! close-on-exec; IPv6 ones are IPv6-only. They are bound here, while the
//! loader is privileged (port 53), and handed to whoever uses them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use nix::sys::socket::{self as nix_socket, sockopt};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Receive buffer the busy UDP sockets ask for (SO_RCVBUFFORCE, so rmem_max
/// does not cap it): bursts queue instead of being dropped.
pub const RCVBUF: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[error("cannot {what} the socket for {addr}: {source}{hint}", hint = hint(source))]
pub struct SocketError {
    pub what: &'static str,
    pub addr: SocketAddr,
    pub source: io::Error,
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES) => " (ports below ip_unprivileged_port_start need CAP_NET_BIND_SERVICE)",
        Some(libc::EADDRINUSE) => {
            " (another process holds this address without SO_REUSEPORT, or another xdpdns instance does)"
        }
        _ => "",
    }
}

/// Options of a UDP socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct Udp {
    /// SO_REUSEPORT: one socket per dataplane on the same address.
    pub reuse_port: bool,
    /// IP_FREEBIND: the address may be configured after xdpdns starts.
    pub freebind: bool,
    /// A large receive buffer (best effort: needs CAP_NET_ADMIN).
    pub big_rcvbuf: bool,
    /// Connect to this peer after binding.
    pub connect: Option<SocketAddr>,
    /// Only holds the port: a filter drops everything that arrives and the
    /// receive buffer is the smallest the kernel allows.
    pub deaf: bool,
    /// IP(V6)_RECVORIGDSTADDR: each datagram comes with the address and
    /// port it was sent to (a receiver of steered replies).
    pub orig_dst: bool,
}

/// A classic BPF program of one instruction, `ret #0`: accept no bytes of
/// any packet, so nothing is ever queued on the socket.
fn drop_everything(s: &Socket) -> io::Result<()> {
    s.attach_filter(&[socket2::SockFilter::new(
        (libc::BPF_RET | libc::BPF_K) as u16,
        0,
        0,
        0,
    )])?;
    s.set_recv_buffer_size(0)
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, ty.nonblocking().cloexec(), Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    Ok(s)
}

fn freebind(s: &Socket, v6: bool) -> io::Result<()> {
    if v6 {
        s.set_freebind_v6(true)
    } else {
        s.set_freebind_v4(true)
    }
}

/// A UDP socket bound to `addr` with `opts`.
pub fn udp(addr: SocketAddr, opts: Udp) -> Result<OwnedFd, SocketError> {
    let err = |what| move |source| SocketError { what, addr, source };
    let s = socket(addr, Type::DGRAM, Protocol::UDP).map_err(err("create"))?;
    if opts.reuse_port {
        s.set_reuse_port(true).map_err(err("configure"))?;
    }
    if opts.freebind {
        freebind(&s, addr.is_ipv6()).map_err(err("configure"))?;
    }
    if opts.deaf {
        drop_everything(&s).map_err(err("configure"))?;
    }
    let fd = OwnedFd::from(s);
    if opts.orig_dst {
        if addr.is_ipv6() {
            nix_socket::setsockopt(&fd, sockopt::Ipv6OrigDstAddr, &true)
        } else {
            nix_socket::setsockopt(&fd, sockopt::Ipv4OrigDstAddr, &true)
        }
        .map_err(|e| err("configure")(e.into()))?;
    }
    if opts.big_rcvbuf {
        // Best effort: without CAP_NET_ADMIN the default buffer stays.
        let _ = nix_socket::setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF);
    }
    let s = Socket::from(fd);
    s.bind(&SockAddr::from(addr)).map_err(err("bind"))?;
    if let Some(peer) = opts.connect {
        s.connect(&SockAddr::from(peer)).map_err(err("connect"))?;
    }
    Ok(s.into())
}

/// One SO_REUSEPORT, free-bind UDP socket per listen address, in order.
pub fn kernel_path(addrs: &[SocketAddr]) -> Result<Vec<OwnedFd>, SocketError> {
    let opts = Udp {
        reuse_port: true,
        freebind: true,
        big_rcvbuf: true,
        ..Udp::default()
    };
    addrs.iter().map(|a| udp(*a, opts)).collect()
}

/// A listening TCP socket on `addr` (free-bind, SO_REUSEADDR).
pub fn tcp_listener(addr: SocketAddr, backlog: i32) -> Result<std::net::TcpListener, SocketError> {
    listener(addr, backlog, false)
}

/// A listening TCP socket on `addr` that joins the SO_REUSEPORT group of
/// the others bound there (one per TCP worker: the kernel spreads
/// connections over them, and one worker's restart leaves the others).
pub fn tcp_listener_shared(
    addr: SocketAddr,
    backlog: i32,
) -> Result<std::net::TcpListener, SocketError> {
    listener(addr, backlog, true)
}

fn listener(
    addr: SocketAddr,
    backlog: i32,
    reuse_port: bool,
) -> Result<std::net::TcpListener, SocketError> {
    let err = |what| move |source| SocketError { what, addr, source };
    let s = socket(addr, Type::STREAM, Protocol::TCP).map_err(err("create"))?;
    s.set_reuse_address(true).map_err(err("configure"))?;
    if reuse_port {
        s.set_reuse_port(true).map_err(err("configure"))?;
    }
    freebind(&s, addr.is_ipv6()).map_err(err("configure"))?;
    s.bind(&SockAddr::from(addr)).map_err(err("bind"))?;
    s.listen(backlog).map_err(err("listen on"))?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn udp_sockets_bind_connect_and_share_a_port_with_reuseport() {
        let opts = Udp {
            reuse_port: true,
            freebind: true,
            ..Udp::default()
        };
        let a = udp("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let port =
            nix_socket::getsockname::<nix_socket::SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&a))
                .unwrap()
                .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let b = udp(addr, opts).expect("a second reuseport socket on the same address");
        assert!(nix_socket::getsockopt(&b.as_fd(), sockopt::ReusePort).unwrap());
        // Without SO_REUSEPORT the port is taken, and the error says so.
        let e = udp(addr, Udp::default()).unwrap_err();
        assert!(e.to_string().contains("another process holds"), "{e}");
        let c = udp(
            "127.0.0.1:0".parse().unwrap(),
            Udp {
                connect: Some(addr),
                ..Udp::default()
            },
        )
        .unwrap();
        let peer =
            nix_socket::getpeername::<nix_socket::SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&c))
                .unwrap();
        assert_eq!(peer.port(), port);
        let v6 = udp("[::1]:0".parse().unwrap(), Udp::default()).unwrap();
        assert!(nix_socket::getsockopt(&v6.as_fd(), sockopt::Ipv6V6Only).unwrap());
    }

    #[test]
    fn deaf_sockets_hold_their_port_and_receive_nothing() {
        let deaf = udp(
            "127.0.0.1:0".parse().unwrap(),
            Udp {
                deaf: true,
                ..Udp::default()
            },
        )
        .unwrap();
        let deaf = std::net::UdpSocket::from(deaf);
        let addr = deaf.local_addr().unwrap();
        // The port is held: nobody else binds it.
        assert!(udp(addr, Udp::default()).is_err());
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..10 {
            tx.send_to(b"hello", addr).unwrap();
        }
        // A control socket proves datagrams to loopback arrive promptly.
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(rx.recv(&mut buf).unwrap(), 5);
        let mut buf = [0u8; 16];
        assert_eq!(
            deaf.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "the filter drops everything"
        );
    }

    #[test]
    fn tcp_listeners_accept() {
        let l = tcp_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(false).unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        assert!(l.accept().is_ok());
    }
}
