//! Creating, binding and owning one AF_XDP socket with its UMEM and rings.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use xdpdns_common::config::XskBindMode;
use xdpdns_common::stats::XskKernelStats;
use xdpilone::xdp::{XdpDesc, XdpRingOffsets};

use super::ring::{Consumer, Producer, RingMem};
use super::sys::{self, Mapping};
use super::umem::Umem;

/// What to build.
#[derive(Debug, Clone)]
pub struct XskConfig {
    pub ifname: String,
    pub ifindex: u32,
    pub queue_id: u32,
    pub frames: u32,
    pub frame_size: u32,
    /// Entries in each of the four rings (a power of two).
    pub ring_size: u32,
    pub bind_mode: XskBindMode,
}

/// Setting up the socket failed; each variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("cannot create the AF_XDP socket: {0} (socket(AF_XDP) needs CAP_NET_RAW)")]
    Socket(#[source] io::Error),
    #[error("cannot allocate {bytes} bytes of UMEM: {source}")]
    UmemAlloc { bytes: u64, source: io::Error },
    #[error("cannot register {bytes} bytes of UMEM: {source}{hint}", hint = umem_hint(source))]
    UmemRegister { bytes: u64, source: io::Error },
    #[error("cannot size the {ring} ring to {entries} entries: {source}")]
    RingSize {
        ring: &'static str,
        entries: u32,
        source: io::Error,
    },
    #[error("cannot read the ring layout: {0}")]
    Offsets(#[source] io::Error),
    #[error("cannot map the {ring} ring: {source}")]
    Map {
        ring: &'static str,
        source: io::Error,
    },
    #[error("cannot bind to {ifname} queue {queue}: {source}{hint}", hint = bind_hint(source))]
    Bind {
        ifname: String,
        queue: u32,
        source: io::Error,
    },
    #[error("cannot query the socket's mode: {0}")]
    Options(#[source] io::Error),
}

impl XskError {
    /// The errno behind the failure.
    pub fn errno(&self) -> Option<i32> {
        match self {
            XskError::Socket(e) | XskError::Offsets(e) | XskError::Options(e) => e.raw_os_error(),
            XskError::UmemAlloc { source, .. }
            | XskError::UmemRegister { source, .. }
            | XskError::RingSize { source, .. }
            | XskError::Map { source, .. }
            | XskError::Bind { source, .. } => source.raw_os_error(),
        }
    }

    /// Short name of the stage that failed.
    pub fn stage(&self) -> &'static str {
        match self {
            XskError::Socket(_) => "socket",
            XskError::UmemAlloc { .. } => "umem allocation",
            XskError::UmemRegister { .. } => "umem registration",
            XskError::RingSize { .. } => "ring sizing",
            XskError::Offsets(_) => "ring layout",
            XskError::Map { .. } => "ring mapping",
            XskError::Bind { .. } => "bind",
            XskError::Options(_) => "options",
        }
    }
}

fn umem_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) | Some(libc::EPERM) => {
            ": the user's locked memory (RLIMIT_MEMLOCK, shared by all its processes) is exhausted; \
             raise LimitMEMLOCK, lower xsk.frames, or set dataplane.keep_ipc_lock = true"
        }
        _ => "",
    }
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EBUSY) => {
            ": another AF_XDP socket is bound to this queue (another xdpdns instance?)"
        }
        Some(libc::EINVAL) => ": the queue does not exist on this device",
        Some(libc::EOPNOTSUPP) => {
            ": the driver cannot do zero-copy here; set xsk.bind_mode = \"copy\" or \"auto\""
        }
        Some(libc::ENODEV) | Some(libc::ENXIO) => ": the interface is gone",
        _ => "",
    }
}

/// One bound AF_XDP socket. The rings and the UMEM are public so the loop can
/// borrow them at once; each ring owns its mapping, so none can dangle.
pub struct Xsk {
    pub fill: Producer<u64>,
    pub completion: Consumer<u64>,
    pub rx: Consumer<XdpDesc>,
    pub tx: Producer<XdpDesc>,
    pub umem: Umem,
    fd: OwnedFd,
    zero_copy: bool,
}

impl Xsk {
    /// Creates the socket and UMEM, maps the rings and binds to the queue.
    /// The fill ring is empty: stock it before the socket enters the XSKMAP.
    pub fn open(cfg: &XskConfig) -> Result<Xsk, XskError> {
        let fd = sys::xdp_socket().map_err(XskError::Socket)?;
        let bytes = u64::from(cfg.frames) * u64::from(cfg.frame_size);
        let umem = Umem::new(cfg.frames, cfg.frame_size)
            .map_err(|source| XskError::UmemAlloc { bytes, source })?;
        sys::register_umem(fd.as_fd(), umem.base(), umem.len(), cfg.frame_size)
            .map_err(|source| XskError::UmemRegister { bytes, source })?;
        for (ring, opt) in [
            ("fill", sys::XDP_UMEM_FILL_RING),
            ("completion", sys::XDP_UMEM_COMPLETION_RING),
            ("rx", sys::XDP_RX_RING),
            ("tx", sys::XDP_TX_RING),
        ] {
            sys::set_ring_size(fd.as_fd(), opt, cfg.ring_size).map_err(|source| {
                XskError::RingSize {
                    ring,
                    entries: cfg.ring_size,
                    source,
                }
            })?;
        }
        let off = sys::mmap_offsets(fd.as_fd()).map_err(XskError::Offsets)?;
        let n = cfg.ring_size;
        let fill = Producer::new(map_ring::<u64>(
            fd.as_fd(),
            "fill",
            &off.fr,
            n,
            sys::PGOFF_FILL_RING,
        )?);
        let completion = Consumer::new(map_ring::<u64>(
            fd.as_fd(),
            "completion",
            &off.cr,
            n,
            sys::PGOFF_COMPLETION_RING,
        )?);
        let rx = Consumer::new(map_ring::<XdpDesc>(
            fd.as_fd(),
            "rx",
            &off.rx,
            n,
            sys::PGOFF_RX_RING,
        )?);
        let tx = Producer::new(map_ring::<XdpDesc>(
            fd.as_fd(),
            "tx",
            &off.tx,
            n,
            sys::PGOFF_TX_RING,
        )?);

        let mode = match cfg.bind_mode {
            XskBindMode::Auto => 0,
            XskBindMode::Copy => sys::XDP_COPY,
            XskBindMode::ZeroCopy => sys::XDP_ZEROCOPY,
        };
        bind_when_free(fd.as_fd(), cfg, mode | sys::XDP_USE_NEED_WAKEUP).map_err(|source| {
            XskError::Bind {
                ifname: cfg.ifname.clone(),
                queue: cfg.queue_id,
                source,
            }
        })?;
        let zero_copy = sys::is_zero_copy(fd.as_fd()).map_err(XskError::Options)?;
        Ok(Xsk {
            fill,
            completion,
            rx,
            tx,
            umem,
            fd,
            zero_copy,
        })
    }

    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Makes the kernel process the TX ring (copy mode sends here).
    pub fn kick_tx(&self) -> io::Result<()> {
        sys::kick_tx(self.fd.as_fd())
    }

    /// The kernel's counters for this socket.
    pub fn kernel_stats(&self) -> io::Result<XskKernelStats> {
        let s = sys::statistics(self.fd.as_fd())?;
        Ok(XskKernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

impl AsFd for Xsk {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How long a bind waits for a queue still held by a socket being released.
const BIND_BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Binds, waiting out EBUSY for a moment: the kernel frees a closed socket's
/// claim on the queue from a workqueue, shortly after its owner has exited,
/// so a dataplane replacing a dead one can find the queue still taken.
fn bind_when_free(fd: BorrowedFd<'_>, cfg: &XskConfig, flags: u16) -> io::Result<()> {
    let deadline = std::time::Instant::now() + BIND_BUSY_WAIT;
    loop {
        match sys::bind(fd, cfg.ifindex, cfg.queue_id, flags) {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

/// Maps one ring and wraps its memory; the ring keeps the mapping alive.
fn map_ring<T: Copy>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    off: &XdpRingOffsets,
    entries: u32,
    pgoff: libc::off_t,
) -> Result<RingMem<T>, XskError> {
    let map_err = |source| XskError::Map { ring: name, source };
    let len = off.desc as usize + entries as usize * std::mem::size_of::<T>();
    for o in [off.producer, off.consumer, off.flags] {
        if o as usize + 4 > len || !o.is_multiple_of(4) {
            return Err(map_err(io::Error::other(
                "kernel ring offsets out of range",
            )));
        }
    }
    if !(off.desc as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(map_err(io::Error::other(
            "kernel descriptor offset misaligned",
        )));
    }
    let mapping = Mapping::ring(fd, len, pgoff).map_err(map_err)?;
    let base = mapping.ptr();
    let at = |o: u64| -> NonNull<AtomicU32> {
        // SAFETY: `o + 4 <= len` and 4-aligned (checked above) inside the new mapping.
        unsafe { base.add(o as usize) }.cast()
    };
    // SAFETY: desc offset plus `entries` descriptors is within `len`, aligned (checked).
    let descs: NonNull<T> = unsafe { base.add(off.desc as usize) }.cast();
    // SAFETY: pointers are inside `mapping`, which the ring takes ownership of,
    // so they stay valid for the ring's life; `entries` is a power of two
    // (the kernel accepted it as a ring size).
    Ok(unsafe {
        RingMem::new(
            at(off.producer),
            at(off.consumer),
            at(off.flags),
            descs,
            entries,
            Some(mapping),
        )
    })
}
