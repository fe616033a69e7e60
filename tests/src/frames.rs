//! Raw Ethernet frames for hostile-input tests, sent from an AF_PACKET
//! socket. Frames are built with the dataplane's test builders
//! (`xdpdns_dataplane::testing`), whose checksum is a reference
//! implementation independent of the one under test.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, bail};
pub use xdpdns_dataplane::testing::{FrameSpec, build, query, reference_checksum};

/// Recomputes the IPv4 header checksum of an Ethernet frame after an edit.
pub fn fix_ipv4_checksum(f: &mut [u8]) {
    f[24..26].copy_from_slice(&[0, 0]);
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let c = reference_checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn mac(text: &str) -> anyhow::Result<[u8; 6]> {
    xdpdns_common::config::parse_mac(text.trim()).with_context(|| format!("bad MAC {text:?}"))
}

/// An AF_PACKET socket bound to `ifindex` in the calling thread's namespace.
pub fn packet_socket(ifindex: u32) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binds to a live, correctly sized sockaddr_ll.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        bail!("bind(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends one raw frame; frames the kernel refuses to send are an error.
pub fn send(fd: &OwnedFd, frame: &[u8]) -> anyhow::Result<()> {
    // SAFETY: sends from a live slice of the length passed.
    let r = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    if r < 0 {
        bail!(
            "send of a {}-byte frame: {}",
            frame.len(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
