//! Memory shared between the processes of one instance: regions the loader
//! creates as sealed memfds and every dataplane maps (the in-flight table
//! today). All raw mapping work is here; what it exports is a slice of
//! atomic words.
//!
//! # Trust model
//!
//! A region is written by several dataplanes, each of which may be
//! compromised. Sharing memory must not let one of them crash, hang or steer
//! another, so:
//!
//! - The mapping cannot shrink under a reader: the loader seals the memfd
//!   (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), and [`SharedRegion::map`]
//!   refuses a memfd without those seals or smaller than expected. Without
//!   that, a writer could truncate it and every reader would die of SIGBUS.
//! - Every access is an atomic load or store of a whole 64-bit word, so a
//!   concurrent or hostile writer can make a reader see wrong *values* but
//!   never undefined behaviour; multi-word records are validated as a whole
//!   by a state word and generation (see `inflight`).
//! - Nothing read from a region is used as an index, length or address
//!   without a bounds check against the region or the fixed geometry both
//!   sides agreed on at start.
//! - What a dataplane emits because of a shared record (an answer to a
//!   client) is validated by the emitting dataplane before it leaves; see
//!   `inflight` for which checks apply and docs/security.md for what a
//!   compromised dataplane can and cannot do.

pub mod cache;
pub mod inflight;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// The packet cache's clock, in milliseconds: CLOCK_MONOTONIC_COARSE, the
/// same clock in every process, so every queue and TCP worker ages the
/// entries alike. Its tick (4 ms at HZ=250) is far below a TTL's second;
/// it costs 3 ns where CLOCK_MONOTONIC costs 24 ns on this VM — a hit paid
/// that once per answer.
pub fn cache_clock_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so a
/// restarted dataplane reads its predecessor's deadlines right.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Seals a shared region's memfd must carry.
const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("shared region: {0}")]
    Sys(#[from] io::Error),
    #[error("shared region of {have} bytes, {want} expected")]
    Size { have: u64, want: u64 },
    #[error("shared region is not sealed against shrinking (seals {0:#x})")]
    NotSealed(libc::c_int),
    #[error("shared region size {0} is not a whole number of 64-bit words")]
    Unaligned(usize),
}

/// A read-write `MAP_SHARED` mapping of whole 64-bit words, unmapped on drop.
pub struct SharedRegion {
    ptr: NonNull<AtomicU64>,
    words: usize,
}

// SAFETY: the region is shared memory accessed only through atomics; moving
// or sharing the handle between threads is as safe as between processes.
unsafe impl Send for SharedRegion {}
// SAFETY: as above: `words()` hands out shared references to atomics only.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Maps `bytes` of the sealed memfd `fd` the loader created.
    pub fn map(fd: BorrowedFd<'_>, bytes: usize) -> Result<SharedRegion, ShmError> {
        if bytes == 0 || !bytes.is_multiple_of(8) {
            return Err(ShmError::Unaligned(bytes));
        }
        // SAFETY: F_GET_SEALS reads no memory.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(io::Error::last_os_error().into());
        }
        if seals & REQUIRED_SEALS != REQUIRED_SEALS {
            return Err(ShmError::NotSealed(seals));
        }
        // SAFETY: fstat writes one struct stat into a live, zeroed local.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let have = st.st_size as u64;
        if have < bytes as u64 {
            return Err(ShmError::Size {
                have,
                want: bytes as u64,
            });
        }
        Ok(Self::mmap(bytes, libc::MAP_SHARED, fd.as_raw_fd())?)
    }

    /// Anonymous shared memory (tests, benchmarks, a single process).
    pub fn anonymous(bytes: usize) -> Result<SharedRegion, ShmError> {
        if bytes == 0 || !bytes.is_multiple_of(8) {
            return Err(ShmError::Unaligned(bytes));
        }
        Ok(Self::mmap(
            bytes,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
        )?)
    }

    fn mmap(bytes: usize, flags: libc::c_int, fd: libc::c_int) -> io::Result<SharedRegion> {
        // SAFETY: a fresh mapping chosen by the kernel; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(SharedRegion {
            ptr,
            words: bytes / 8,
        })
    }

    /// Asks the CPU to bring `word`'s cache line in ahead of its use (the
    /// index cells a key picks are random: a likely cache miss). Only a hint:
    /// no value changes.
    #[inline]
    pub fn prefetch(word: &AtomicU64) {
        crate::prefetch::line(word.as_ptr().cast_const().cast());
    }

    /// The region as atomic words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `words * 8` bytes, page-aligned (so aligned
        // for AtomicU64), readable and writable, and lives until `self`
        // drops, which the returned borrow cannot outlive. AtomicU64 has the
        // size of u64 and every bit pattern is a valid value; other processes
        // change the memory only through atomic instructions (a hostile one
        // can at worst store arbitrary values, which atomics tolerate).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.words) }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: we own exactly this mapping; borrows of `words()` have ended.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.words * 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::sync::atomic::Ordering;

    fn memfd(bytes: i64, seals: libc::c_int) -> OwnedFd {
        // SAFETY: memfd_create reads a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: a descriptor we just created.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: integer arguments only.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), bytes) }, 0);
        if seals != 0 {
            // SAFETY: integer arguments only.
            let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
            assert_eq!(r, 0);
        }
        fd
    }

    #[test]
    fn a_sealed_memfd_maps_and_is_shared_between_mappings() {
        let fd = memfd(4096, REQUIRED_SEALS);
        let a = SharedRegion::map(fd.as_fd(), 4096).unwrap();
        let b = SharedRegion::map(fd.as_fd(), 4096).unwrap();
        a.words()[7].store(42, Ordering::Release);
        assert_eq!(b.words()[7].load(Ordering::Acquire), 42);
        assert_eq!(a.words().len(), 512);
    }

    #[test]
    fn unsealed_short_or_odd_regions_are_refused() {
        let unsealed = memfd(4096, 0);
        assert!(matches!(
            SharedRegion::map(unsealed.as_fd(), 4096),
            Err(ShmError::NotSealed(_))
        ));
        let short = memfd(4096, REQUIRED_SEALS);
        assert!(matches!(
            SharedRegion::map(short.as_fd(), 8192),
            Err(ShmError::Size { .. })
        ));
        assert!(matches!(
            SharedRegion::map(short.as_fd(), 12),
            Err(ShmError::Unaligned(12))
        ));
        assert!(SharedRegion::anonymous(0).is_err());
    }
}
