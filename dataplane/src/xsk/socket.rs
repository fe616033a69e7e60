//! Creating, binding and owning one AF_XDP socket with its UMEM and rings.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use xdpdns_common::config::XskBindMode;
use xdpdns_common::stats::RingLevels;
use xdpdns_common::stats::XskKernelStats;

use super::pool::FramePool;
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

/// One bound AF_XDP socket with its UMEM. Frames are reached only through
/// [`Xsk::receive`] and [`Xsk::build`]; which chunk is where is the
/// business of [`Frames`] (see `pool.rs`).
pub struct Xsk {
    frames: Frames,
    fd: OwnedFd,
    zero_copy: bool,
}

impl Xsk {
    /// Creates the socket and UMEM, maps the rings and binds to the queue.
    /// The fill ring is empty: stock it ([`Xsk::refill`]) before the socket
    /// enters the XSKMAP.
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
        let rings = Rings {
            fill: Producer::new(map_ring::<u64>(
                fd.as_fd(),
                "fill",
                &off.fr,
                n,
                sys::PGOFF_FILL_RING,
            )?),
            completion: Consumer::new(map_ring::<u64>(
                fd.as_fd(),
                "completion",
                &off.cr,
                n,
                sys::PGOFF_COMPLETION_RING,
            )?),
            rx: Consumer::new(map_ring::<libc::xdp_desc>(
                fd.as_fd(),
                "rx",
                &off.rx,
                n,
                sys::PGOFF_RX_RING,
            )?),
            tx: Producer::new(map_ring::<libc::xdp_desc>(
                fd.as_fd(),
                "tx",
                &off.tx,
                n,
                sys::PGOFF_TX_RING,
            )?),
        };

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
            frames: Frames::new(rings, umem),
            fd,
            zero_copy,
        })
    }

    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Bytes of UMEM registered.
    pub fn umem_bytes(&self) -> usize {
        self.frames.umem.len()
    }

    /// Completed transmissions: their chunks are free again. Returns how many.
    pub fn reclaim(&mut self, max: u32) -> u32 {
        self.frames.reclaim(max)
    }

    /// Hands free chunks to the kernel for reception. Returns how many.
    pub fn refill(&mut self) -> u32 {
        self.frames.refill()
    }

    /// Hands up to `max` received frames to `f`, one at a time, as the whole
    /// chunk with the frame at `[head, head + len)`; `f`'s [`Fate`] says
    /// whether the chunk is transmitted (an answer written in place) or free.
    pub fn receive(&mut self, max: u32, f: impl FnMut(&mut [u8], usize, usize) -> Fate) -> Rx {
        self.frames.receive(max, f)
    }

    /// Builds a frame in a free chunk: `f` gets the whole chunk and returns
    /// where the frame is in it, or `None` to give the chunk back. False if
    /// no chunk was free or `f` declined.
    pub fn build(&mut self, f: impl FnOnce(&mut [u8]) -> Option<(usize, usize)>) -> bool {
        self.frames.build(f)
    }

    /// Keeps an eighth of the chunks out of the fill ring for
    /// [`Xsk::build`]: frames built from scratch (answers to replies that
    /// came over sockets, timeout answers) take them. Without a reserve a
    /// full RX ring and a full fill ring hold every chunk under overload,
    /// and those answers would wait or take the slow kernel path. Only a
    /// dataplane that builds frames (one that forwards) wants it.
    pub fn reserve_for_builds(&mut self) {
        self.frames.reserve = (self.frames.umem.frames() as usize / 8).max(8);
    }

    /// How many chunks [`Xsk::build`] could take now.
    pub fn free_chunks(&self) -> usize {
        self.frames.pool.free_count()
    }

    /// Moves queued frames into the TX ring and wakes the kernel when
    /// transmissions are outstanding — deferred while `more_coming` (RX
    /// still delivers) and fewer than [`KICK_BATCH`] wait: in copy mode
    /// every kick is a system call that sends the whole batch.
    pub fn flush(&mut self, more_coming: bool) -> Tx {
        let zero_copy = self.zero_copy;
        let fd = self.fd.as_fd();
        self.frames
            .flush(more_coming, zero_copy, || sys::kick_tx(fd))
    }

    /// Whether frames are queued or in the TX ring.
    pub fn tx_pending(&mut self) -> bool {
        self.frames.tx_pending()
    }

    /// Ring occupancy and chunk counts, for the counters.
    pub fn levels(&mut self) -> RingLevels {
        self.frames.levels()
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

/// Transmissions are deferred while RX keeps delivering, up to this many.
pub const KICK_BATCH: u32 = 32;

/// Received frames whose first lines are fetched ahead, counting the one in
/// hand (at least 2).
const RX_PREFETCH: u32 = 4;

/// What a receive callback decides about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Transmit the chunk's bytes `[head, head + len)`.
    Transmit { head: usize, len: usize },
    /// The chunk is free again (the frame was dropped, or went elsewhere).
    Recycle,
}

/// What one [`Xsk::receive`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rx {
    /// Descriptors taken from the RX ring.
    pub received: u32,
    /// Of those, descriptors pointing outside the UMEM or past their chunk.
    pub invalid: u32,
    /// Transmissions the callback asked for outside its chunk (a bug), dropped.
    pub bad_transmits: u32,
}

/// What one [`Xsk::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tx {
    /// Frames moved into the TX ring.
    pub queued: u32,
    /// Frames still waiting because the TX ring was full.
    pub waiting: u32,
    pub kicked: bool,
    /// The kick failed with something other than EAGAIN/EBUSY/ENOBUFS/EINTR.
    pub kick_failed: bool,
}

/// The four rings of one socket.
pub(super) struct Rings {
    pub(super) fill: Producer<u64>,
    pub(super) completion: Consumer<u64>,
    pub(super) rx: Consumer<libc::xdp_desc>,
    pub(super) tx: Producer<libc::xdp_desc>,
}

/// The rings, the UMEM and the pool: all movement of chunks.
pub(super) struct Frames {
    rings: Rings,
    umem: Umem,
    pool: FramePool,
    /// Chunks refill leaves free (see [`Xsk::reserve_for_builds`]).
    reserve: usize,
}

impl Frames {
    pub(super) fn new(rings: Rings, umem: Umem) -> Self {
        let n = umem.frames() as usize;
        let pool = FramePool::new(umem.chunks(), n);
        Frames {
            rings,
            umem,
            pool,
            reserve: 0,
        }
    }

    pub(super) fn reclaim(&mut self, max: u32) -> u32 {
        let limit = self.umem.len() as u64;
        let mut done = self.rings.completion.peek(max);
        let n = done.len();
        for addr in done.by_ref() {
            // An address outside the UMEM is not ours to keep.
            if addr < limit {
                self.pool.give_back(self.umem.chunk_of(addr));
            }
        }
        done.release();
        n
    }

    pub(super) fn refill(&mut self) -> u32 {
        let want = self.pool.free_count().saturating_sub(self.reserve) as u32;
        if want == 0 {
            return 0;
        }
        let mut w = self.rings.fill.reserve(want);
        let mut n = 0;
        while n < want
            && let Some(chunk) = self.pool.take_free()
        {
            if let Err(chunk) = w.push(chunk) {
                self.pool.give_back(chunk);
                break;
            }
            n += 1;
        }
        w.commit();
        n
    }

    pub(super) fn receive(
        &mut self,
        max: u32,
        mut f: impl FnMut(&mut [u8], usize, usize) -> Fate,
    ) -> Rx {
        let Frames {
            rings, umem, pool, ..
        } = self;
        let frame_size = umem.frame_size() as usize;
        let mut rx = Rx::default();
        let mut descs = rings.rx.peek(max);
        rx.received = descs.len();
        // Frames are fetched a few ahead of their turn: the first read of
        // each is otherwise a cache miss (the kernel wrote it on another CPU).
        for k in 0..RX_PREFETCH - 1 {
            if let Some(d) = descs.ahead(k) {
                umem.prefetch_frame(d.addr);
            }
        }
        while let Some(desc) = descs.next() {
            if let Some(d) = descs.ahead(RX_PREFETCH - 2) {
                umem.prefetch_frame(d.addr);
            }
            let base = umem.chunk_of(desc.addr);
            let head = (desc.addr - base) as usize;
            let Some(chunk) = umem.frame_mut(base) else {
                // Outside the UMEM: not a chunk we could recycle.
                rx.invalid += 1;
                continue;
            };
            if head + desc.len as usize > frame_size {
                rx.invalid += 1;
                pool.give_back(base);
                continue;
            }
            match f(chunk, head, desc.len as usize) {
                Fate::Transmit { head, len } if len > 0 && head + len <= frame_size => {
                    pool.queue(libc::xdp_desc {
                        addr: base + head as u64,
                        len: len as u32,
                        options: 0,
                    })
                }
                Fate::Transmit { .. } => {
                    rx.bad_transmits += 1;
                    pool.give_back(base);
                }
                Fate::Recycle => pool.give_back(base),
            }
        }
        descs.release();
        rx
    }

    pub(super) fn build(&mut self, f: impl FnOnce(&mut [u8]) -> Option<(usize, usize)>) -> bool {
        let Some(base) = self.pool.take_free() else {
            return false;
        };
        let frame_size = self.umem.frame_size() as usize;
        let built = self.umem.frame_mut(base).and_then(f);
        match built {
            Some((start, len)) if len > 0 && start + len <= frame_size => {
                self.pool.queue(libc::xdp_desc {
                    addr: base + start as u64,
                    len: len as u32,
                    options: 0,
                });
                true
            }
            _ => {
                self.pool.give_back(base);
                false
            }
        }
    }

    pub(super) fn flush(
        &mut self,
        more_coming: bool,
        zero_copy: bool,
        kick: impl FnOnce() -> io::Result<()>,
    ) -> Tx {
        let mut tx = Tx::default();
        let waiting = self.pool.backlog_len() as u32;
        if waiting > 0 {
            let mut w = self.rings.tx.reserve(waiting);
            while let Some(desc) = self.pool.next_queued() {
                if let Err(desc) = w.push(desc) {
                    self.pool.requeue(desc);
                    break;
                }
                tx.queued += 1;
            }
            w.commit();
            tx.waiting = self.pool.backlog_len() as u32;
        }
        let outstanding = self.rings.tx.outstanding();
        let batch_ready = !more_coming || outstanding >= KICK_BATCH || tx.waiting > 0;
        if outstanding > 0 && batch_ready && (self.rings.tx.needs_wakeup() || !zero_copy) {
            tx.kicked = true;
            if let Err(e) = kick() {
                tx.kick_failed = !matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR)
                );
            }
        }
        tx
    }

    pub(super) fn tx_pending(&mut self) -> bool {
        self.pool.backlog_len() > 0 || self.rings.tx.outstanding() > 0
    }

    pub(super) fn levels(&mut self) -> RingLevels {
        RingLevels {
            fill: self.rings.fill.outstanding(),
            rx: self.rings.rx.available(u32::MAX),
            tx: self.rings.tx.outstanding(),
            completion: self.rings.completion.available(u32::MAX),
            free: self.pool.free_count() as u32,
            tx_backlog: self.pool.backlog_len() as u32,
        }
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
    off: &libc::xdp_ring_offset,
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
