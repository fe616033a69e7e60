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

/// Records every frame an interface receives (not those it sends), from a
/// thread, until [`Sniffer::finish`].
pub struct Sniffer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Vec<Vec<u8>>>>>,
}

impl Sniffer {
    /// Starts on a socket from [`sniff_socket`].
    pub fn start(fd: OwnedFd) -> Sniffer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<Vec<Vec<u8>>> {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: sockaddr_ll is plain data; all-zero is valid.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: receives into a live buffer and address of the sizes passed.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) {
                        continue;
                    }
                    bail!("recvfrom(AF_PACKET): {e}");
                }
                if from.sll_pkttype != libc::PACKET_OUTGOING {
                    got.push(buf[..n as usize].to_vec());
                }
            }
            Ok(got)
        });
        Sniffer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the frames received.
    pub fn finish(mut self) -> anyhow::Result<Vec<Vec<u8>>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| anyhow::anyhow!("the sniffer panicked"))?
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An AF_PACKET socket that receives every frame of `ifindex` (calling
/// thread's namespace), with a 100 ms receive timeout.
pub fn sniff_socket(ifindex: u32) -> anyhow::Result<OwnedFd> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(all),
        )
    };
    if fd < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = all;
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
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: sets a timeval option from a live local of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if r < 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// An IPv4/UDP frame's addresses and ports: (src, sport, dst, dport).
pub fn udp4(frame: &[u8]) -> Option<([u8; 4], u16, [u8; 4], u16)> {
    let mut at = 14;
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype == 0x8100 {
        ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        at = 18;
    }
    let ip = frame.get(at..)?;
    if ethertype != 0x0800 || ip.len() < 20 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let udp = ip.get(ihl..ihl + 8)?;
    Some((
        ip[12..16].try_into().ok()?,
        u16::from_be_bytes([udp[0], udp[1]]),
        ip[16..20].try_into().ok()?,
        u16::from_be_bytes([udp[2], udp[3]]),
    ))
}
