//! The network interface: index, queue count, MTU, attached XDP program.
//! Everything here goes through sockets and netlink, which follow the
//! process's network namespace (sysfs may show another namespace's devices).

use std::ffi::CString;
use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use super::netlink::{self, LinkInfo};

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error(
        "xdp.interface: no interface {0:?} in this network namespace (see `ip link`; in a netns, run xdpdns inside it)"
    )]
    Unknown(String),
    #[error("cannot query interface {name:?}: {source}")]
    Query {
        name: String,
        source: netlink::NetlinkError,
    },
}

/// What the loader knows about the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    /// Queues AF_XDP sockets can bind to.
    pub queues: u32,
    /// Where the queue count came from, for `check`.
    pub queues_source: &'static str,
    pub link: LinkInfo,
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

pub fn inspect(name: &str) -> Result<Interface, InterfaceError> {
    let ifindex = ifindex(name).ok_or_else(|| InterfaceError::Unknown(name.into()))?;
    let link = netlink::link(ifindex).map_err(|source| InterfaceError::Query {
        name: name.into(),
        source,
    })?;
    let (queues, queues_source) = match ethtool_channels(name) {
        // veth reports rx/tx channels and 0 combined; real NICs mostly combined.
        Some(ch) if ch.combined.max(ch.rx) > 0 => (ch.combined.max(ch.rx), "ETHTOOL_GCHANNELS"),
        _ => (link.num_rx_queues.max(1), "netlink IFLA_NUM_RX_QUEUES"),
    };
    Ok(Interface {
        name: name.into(),
        ifindex,
        queues,
        queues_source,
        link,
    })
}

/// Current channel counts (`ethtool -l`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    pub rx: u32,
    pub tx: u32,
    pub combined: u32,
}

/// `struct ethtool_channels` from linux/ethtool.h.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// ETHTOOL_GCHANNELS, or `None` if the driver does not answer it.
pub fn ethtool_channels(name: &str) -> Option<Channels> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast();
    // SAFETY: SIOCETHTOOL reads the name and writes at most one
    // ethtool_channels through ifru_data, which points at `ch`, alive here.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    (r == 0).then_some(Channels {
        rx: ch.rx_count,
        tx: ch.tx_count,
        combined: ch.combined_count,
    })
}
