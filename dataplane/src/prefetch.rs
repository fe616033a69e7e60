//! Cache-line prefetch hints, for memory the hot path is about to read
//! that another CPU (the kernel, a sibling dataplane) wrote.

/// Asks the CPU to bring in the cache line holding `p`. Only a hint: a
/// prefetch reads nothing into the program and never faults, whatever the
/// address, so this is safe to call with any pointer.
#[inline]
pub fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` does not dereference `p` in the program's sense:
    // it cannot fault or change memory, on any address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
