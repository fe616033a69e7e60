//! The system calls behind an AF_XDP socket: each one a small function that
//! turns the C convention into `io::Result`. No ring logic here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

pub const SOL_XDP: libc::c_int = 283;
pub const XDP_MMAP_OFFSETS: libc::c_int = 1;
pub const XDP_RX_RING: libc::c_int = 2;
pub const XDP_TX_RING: libc::c_int = 3;
pub const XDP_UMEM_REG: libc::c_int = 4;
pub const XDP_UMEM_FILL_RING: libc::c_int = 5;
pub const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
pub const XDP_STATISTICS: libc::c_int = 7;
pub const XDP_OPTIONS: libc::c_int = 8;
pub const XDP_OPTIONS_ZEROCOPY: u32 = 1;

pub const XDP_COPY: u16 = 1 << 1;
pub const XDP_ZEROCOPY: u16 = 1 << 2;
pub const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;

pub const PGOFF_RX_RING: libc::off_t = 0;
pub const PGOFF_TX_RING: libc::off_t = 0x8000_0000;
pub const PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
pub const PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `socket(AF_XDP, SOCK_RAW)`: needs CAP_NET_RAW.
pub fn xdp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call, no pointers.
    let fd = check(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Plain C structs of `linux/if_xdp.h` (libc's), for which all-zero bytes are
/// a valid value.
///
/// # Safety
///
/// Implement only for `repr(C)` structs of integers.
unsafe trait Zeroable: Sized {
    fn zeroed() -> Self {
        // SAFETY: the implementor is a repr(C) struct of integers (trait contract).
        unsafe { std::mem::zeroed() }
    }
}
// SAFETY: repr(C) structs of u32/u64 fields only.
unsafe impl Zeroable for libc::xdp_mmap_offsets {}
// SAFETY: as above.
unsafe impl Zeroable for libc::xdp_statistics {}
// SAFETY: a u32.
unsafe impl Zeroable for u32 {}

fn getsockopt<T: Zeroable>(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<(T, usize)> {
    let mut value = T::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, writable T and `len` its size; the kernel
    // writes at most `len` bytes and reports how many.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    })?;
    Ok((value, len as usize))
}

/// Registers `len` bytes at `area` as the socket's UMEM. Charged to the
/// user's RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK.
pub fn register_umem(
    fd: BorrowedFd<'_>,
    area: NonNull<u8>,
    len: usize,
    chunk_size: u32,
) -> io::Result<()> {
    let reg = libc::xdp_umem_reg {
        addr: area.as_ptr() as u64,
        len: len as u64,
        chunk_size,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    setsockopt(fd, XDP_UMEM_REG, &reg)
}

/// Sets the number of entries of one ring (`XDP_*_RING`).
pub fn set_ring_size(fd: BorrowedFd<'_>, ring: libc::c_int, entries: u32) -> io::Result<()> {
    setsockopt(fd, ring, &entries)
}

/// The offsets of the producer, consumer, flags and descriptors of each ring.
pub fn mmap_offsets(fd: BorrowedFd<'_>) -> io::Result<libc::xdp_mmap_offsets> {
    let (off, len) = getsockopt::<libc::xdp_mmap_offsets>(fd, XDP_MMAP_OFFSETS)?;
    if len != std::mem::size_of::<libc::xdp_mmap_offsets>() {
        // Kernels before 5.4 return the flag-less v1 layout.
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel returned the pre-5.4 ring layout (no flags word); xdpdns needs Linux 5.4 or later",
        ));
    }
    Ok(off)
}

/// Binds the socket to (ifindex, queue).
pub fn bind(fd: BorrowedFd<'_>, ifindex: u32, queue_id: u32, flags: u16) -> io::Result<()> {
    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue_id,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `addr` is a live sockaddr_xdp of the size passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_xdp).cast(),
            std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The kernel's counters for this socket.
pub fn statistics(fd: BorrowedFd<'_>) -> io::Result<libc::xdp_statistics> {
    getsockopt::<libc::xdp_statistics>(fd, XDP_STATISTICS).map(|(s, _)| s)
}

/// Whether the socket runs in zero-copy mode.
pub fn is_zero_copy(fd: BorrowedFd<'_>) -> io::Result<bool> {
    getsockopt::<u32>(fd, XDP_OPTIONS).map(|(o, _)| o & XDP_OPTIONS_ZEROCOPY != 0)
}

/// Asks the kernel to process the TX ring. In copy mode this is where frames
/// are actually sent.
pub fn kick_tx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length send with null buffer and address is the
    // documented AF_XDP wake-up; nothing is read from the pointers.
    let ret = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An `mmap` region of the socket (rings) or its UMEM, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving it between
// threads moves ownership.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Anonymous, private, populated memory (the UMEM).
    pub fn anonymous(len: usize) -> io::Result<Mapping> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    }

    /// One of the socket's rings at page offset `pgoff`.
    pub fn ring(fd: BorrowedFd<'_>, len: usize, pgoff: libc::off_t) -> io::Result<Mapping> {
        Self::map(
            len,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            pgoff,
        )
    }

    fn map(
        len: usize,
        flags: libc::c_int,
        fd: libc::c_int,
        off: libc::off_t,
    ) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Mapping { ptr, len })
    }

    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own exactly this mapping; nothing refers to it after drop
        // (rings and frame slices borrow from their owner, which drops first).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
