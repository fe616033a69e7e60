//! Kernel-path UDP sockets, bound by the loader while privileged (port 53
//! needs no capability in the dataplanes) and handed to them.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};

/// Receive buffer each kernel-path socket asks for (SO_RCVBUFFORCE, so
/// rmem_max does not cap it): bursts queue instead of being dropped.
pub const RCVBUF: usize = 4 << 20;
const IPV6_FREEBIND: libc::c_int = 78;

#[derive(Debug, thiserror::Error)]
#[error("cannot bind the kernel-path socket for {addr}: {source}{hint}", hint = hint(source))]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: nix::Error,
}

fn hint(e: &nix::Error) -> &'static str {
    match e {
        nix::Error::EACCES => " (ports below ip_unprivileged_port_start need CAP_NET_BIND_SERVICE)",
        nix::Error::EADDRINUSE => {
            " (another process holds this address without SO_REUSEPORT, or another xdpdns instance does)"
        }
        _ => "",
    }
}

/// A non-blocking, close-on-exec UDP socket; IPv6 ones are IPv6-only.
pub fn udp_socket(v6: bool) -> nix::Result<OwnedFd> {
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if v6 {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    Ok(fd)
}

/// One SO_REUSEPORT UDP socket bound to `addr`. IP_FREEBIND lets the address
/// be configured on the interface after xdpdns starts.
pub fn bind_udp(addr: SocketAddr) -> Result<OwnedFd, BindError> {
    let err = |source| BindError { addr, source };
    let fd = udp_socket(addr.is_ipv6()).map_err(err)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true).map_err(err)?;
    match addr {
        SocketAddr::V4(_) => socket::setsockopt(&fd, sockopt::IpFreebind, &true).map_err(err)?,
        SocketAddr::V6(_) => {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads one c_int from a live local.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    IPV6_FREEBIND,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(err(nix::Error::last()));
            }
        }
    }
    // Best effort: without CAP_NET_ADMIN the default buffer stays.
    let _ = socket::setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF);
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(err)?;
    Ok(fd)
}

/// One socket per listen address, in the same order.
pub fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<OwnedFd>, BindError> {
    addrs.iter().map(|a| bind_udp(*a)).collect()
}
