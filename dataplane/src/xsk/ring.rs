//! The four AF_XDP rings as single-producer/single-consumer queues shared with
//! the kernel. All index arithmetic on ring memory lives in this file.
//!
//! Indices are free-running `u32`s that wrap at 2^32, never masked until a slot
//! is addressed; every difference is a `wrapping_sub`, and values the kernel
//! publishes are clamped to the ring size, so a wrap (after 4 billion frames)
//! or a corrupted index can neither panic nor address memory outside the ring.
//!
//! The API is transactional (after xdpilone): [`Producer::reserve`] returns a
//! [`Writer`] that publishes only on [`Writer::commit`] (dropping it publishes
//! nothing); [`Consumer::peek`] returns a [`Reader`] that hands slots back only
//! on [`Reader::release`], and only those actually read.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// `XDP_RING_NEED_WAKEUP` in a ring's flags word.
pub const NEED_WAKEUP: u32 = 1;

/// Where one ring lives in memory shared with the kernel.
pub(super) struct RingMem<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    size: u32,
    /// The mapping the pointers point into, unmapped when the ring drops.
    _mapping: Option<super::sys::Mapping>,
}

impl<T: Copy> RingMem<T> {
    /// # Safety
    ///
    /// The four pointers must be valid, aligned, and stay valid (the mapping
    /// alive) for as long as the returned value and any ring made from it
    /// exist; `descs` must point to `size` consecutive `T`s; `size` must be a
    /// power of two. Only the kernel (or a test's simulated kernel) may touch
    /// the other side of the ring. `mapping`, if given, is kept (and
    /// unmapped) with the ring; without one the caller keeps the memory alive.
    pub(super) unsafe fn new(
        producer: NonNull<AtomicU32>,
        consumer: NonNull<AtomicU32>,
        flags: NonNull<AtomicU32>,
        descs: NonNull<T>,
        size: u32,
        mapping: Option<super::sys::Mapping>,
    ) -> Self {
        assert!(
            size.is_power_of_two(),
            "ring size {size} is not a power of two"
        );
        RingMem {
            producer,
            consumer,
            flags,
            descs,
            size,
            _mapping: mapping,
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: valid and aligned for our lifetime, per `new`'s contract.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn flags(&self) -> u32 {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed)
    }

    /// Pointer to the slot of free-running index `idx`; always inside the ring.
    fn slot(&self, idx: u32) -> *mut T {
        let offset = (idx & (self.size - 1)) as usize;
        // SAFETY: offset < size and `descs` points to `size` Ts (`new`'s contract).
        unsafe { self.descs.as_ptr().add(offset) }
    }
}

/// A ring we produce into: fill and TX.
pub(super) struct Producer<T> {
    mem: RingMem<T>,
    /// Our next index to publish.
    prod: u32,
    /// The kernel's consumer index as last read.
    cons: u32,
}

// SAFETY: the ring is owned by one thread at a time; the pointers refer to a
// mapping kept alive by the owner, not to thread-local data.
unsafe impl<T: Send> Send for Producer<T> {}

impl<T: Copy> Producer<T> {
    pub(super) fn new(mem: RingMem<T>) -> Self {
        let prod = mem.producer().load(Ordering::Relaxed);
        let cons = mem.consumer().load(Ordering::Acquire);
        Producer { mem, prod, cons }
    }

    /// Slots we may write, refreshing the kernel's index if fewer than `want`.
    fn free(&mut self, want: u32) -> u32 {
        let mut free = self.free_cached();
        if free < want {
            self.cons = self.mem.consumer().load(Ordering::Acquire);
            free = self.free_cached();
        }
        free
    }

    fn free_cached(&self) -> u32 {
        // An index from the kernel ahead of ours would make `used` huge:
        // saturate to "no room" instead of underflowing.
        let used = self.prod.wrapping_sub(self.cons);
        self.mem.size.saturating_sub(used)
    }

    /// Reserves up to `max` slots. The writer may hold fewer, even none.
    pub fn reserve(&mut self, max: u32) -> Writer<'_, T> {
        let len = self.free(max).min(max);
        Writer {
            start: self.prod,
            len,
            written: 0,
            ring: self,
        }
    }

    /// Entries published but not yet consumed by the kernel.
    pub fn outstanding(&mut self) -> u32 {
        self.cons = self.mem.consumer().load(Ordering::Acquire);
        self.prod.wrapping_sub(self.cons).min(self.mem.size)
    }

    /// Whether the kernel asks for a system call to make progress.
    pub fn needs_wakeup(&self) -> bool {
        self.mem.flags() & NEED_WAKEUP != 0
    }
}

/// Slots reserved in a [`Producer`]; nothing is visible to the kernel until
/// [`Writer::commit`].
#[must_use = "a writer publishes nothing unless committed"]
pub(super) struct Writer<'r, T: Copy> {
    ring: &'r mut Producer<T>,
    start: u32,
    len: u32,
    written: u32,
}

impl<T: Copy> Writer<'_, T> {
    /// Slots reserved.
    #[cfg(test)]
    pub fn capacity(&self) -> u32 {
        self.len
    }

    /// Writes the next slot; returns the value back if the reservation is full.
    pub fn push(&mut self, value: T) -> Result<(), T> {
        if self.written == self.len {
            return Err(value);
        }
        let slot = self.ring.mem.slot(self.start.wrapping_add(self.written));
        // SAFETY: the slot lies in the ring (`slot` masks) and is ours: it is
        // between the kernel's consumer and our producer plus free space, so
        // the kernel does not read it until we publish.
        unsafe { slot.write(value) };
        self.written += 1;
        Ok(())
    }

    /// Publishes the slots written so far; unwritten ones return to the ring.
    pub fn commit(self) {
        if self.written == 0 {
            return;
        }
        let end = self.start.wrapping_add(self.written);
        // Release: the slot writes above happen-before the kernel sees `end`.
        self.ring.mem.producer().store(end, Ordering::Release);
        self.ring.prod = end;
    }
}

/// A ring the kernel produces into: RX and completion.
pub(super) struct Consumer<T> {
    mem: RingMem<T>,
    /// The kernel's producer index as last read.
    prod: u32,
    /// Our next index to read.
    cons: u32,
}

// SAFETY: as for Producer.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T: Copy> Consumer<T> {
    pub(super) fn new(mem: RingMem<T>) -> Self {
        let prod = mem.producer().load(Ordering::Acquire);
        let cons = mem.consumer().load(Ordering::Relaxed);
        Consumer { mem, prod, cons }
    }

    fn available_cached(&self) -> u32 {
        // Clamp: a kernel index more than a ring ahead is corrupt; never read
        // more than one ring's worth.
        self.prod.wrapping_sub(self.cons).min(self.mem.size)
    }

    /// Entries ready to read, refreshing the kernel's index if fewer than `want`.
    pub fn available(&mut self, want: u32) -> u32 {
        let mut n = self.available_cached();
        if n < want {
            // Acquire: the kernel's slot writes happen-before our reads.
            self.prod = self.mem.producer().load(Ordering::Acquire);
            n = self.available_cached();
        }
        n
    }

    /// Takes up to `max` entries for reading.
    pub fn peek(&mut self, max: u32) -> Reader<'_, T> {
        let len = self.available(max).min(max);
        Reader {
            start: self.cons,
            len,
            read: 0,
            ring: self,
            _t: PhantomData,
        }
    }
}

/// Entries taken from a [`Consumer`]; they go back to the kernel on
/// [`Reader::release`], the unread ones stay for the next peek.
#[must_use = "entries are not returned to the kernel unless released"]
pub(super) struct Reader<'r, T: Copy> {
    ring: &'r mut Consumer<T>,
    start: u32,
    len: u32,
    read: u32,
    _t: PhantomData<T>,
}

impl<T: Copy> Reader<'_, T> {
    pub fn len(&self) -> u32 {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry `k` places after the next one, without taking it (`None`
    /// past the end).
    pub fn ahead(&self, k: u32) -> Option<T> {
        let at = self.read.checked_add(k)?;
        if at >= self.len {
            return None;
        }
        let slot = self.ring.mem.slot(self.start.wrapping_add(at));
        // SAFETY: as in `next`: the slot is in the ring, published by the
        // kernel and not yet released by us; reading it takes nothing.
        Some(unsafe { slot.read() })
    }

    /// Returns the entries read so far to the kernel.
    pub fn release(self) {
        if self.read == 0 {
            return;
        }
        let end = self.start.wrapping_add(self.read);
        // Release: our reads of the slots happen-before the kernel reuses them.
        self.ring.mem.consumer().store(end, Ordering::Release);
        self.ring.cons = end;
    }
}

impl<T: Copy> Iterator for Reader<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.read == self.len {
            return None;
        }
        let slot = self.ring.mem.slot(self.start.wrapping_add(self.read));
        // SAFETY: the slot is in the ring and was published by the kernel
        // (acquire-loaded producer) and not yet released by us.
        let value = unsafe { slot.read() };
        self.read += 1;
        Some(value)
    }
}

#[cfg(test)]
mod tests;
