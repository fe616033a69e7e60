//! The UMEM: the packet memory shared with the kernel, cut into equal chunks.
//! All UMEM address arithmetic lives here.

use std::io;
use std::ptr::NonNull;

use super::sys::Mapping;

/// `frames` chunks of `frame_size` bytes (a power of two), in one mapping.
pub(super) struct Umem {
    area: Mapping,
    frame_size: u32,
    frames: u32,
}

impl Umem {
    pub fn new(frames: u32, frame_size: u32) -> io::Result<Umem> {
        assert!(
            frame_size.is_power_of_two(),
            "frame size must be a power of two"
        );
        let len = usize::try_from(u64::from(frames) * u64::from(frame_size))
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Umem {
            area: Mapping::anonymous(len)?,
            frame_size,
            frames,
        })
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    pub fn len(&self) -> usize {
        self.area.len()
    }

    pub(super) fn base(&self) -> NonNull<u8> {
        self.area.ptr()
    }

    /// The start of the chunk holding UMEM offset `addr`.
    #[inline]
    pub(super) fn chunk_of(&self, addr: u64) -> u64 {
        addr & !u64::from(self.frame_size - 1)
    }

    /// The offset of every chunk, for stocking the free list.
    pub(super) fn chunks(&self) -> impl Iterator<Item = u64> + use<> {
        let size = u64::from(self.frame_size);
        (0..u64::from(self.frames)).map(move |i| i * size)
    }

    /// Asks the CPU to bring in the first two cache lines of the frame at
    /// UMEM offset `addr` (the headers and a query's start, about to be
    /// read; the kernel wrote them on another CPU).
    #[inline]
    pub(super) fn prefetch_frame(&self, addr: u64) {
        self.prefetch(addr);
        self.prefetch(addr.saturating_add(64));
    }

    /// A hint to fetch the line at UMEM offset `addr`; offsets outside the
    /// area are ignored.
    #[inline]
    fn prefetch(&self, addr: u64) {
        if addr < self.area.len() as u64 {
            crate::prefetch::line(self.area.ptr().as_ptr().wrapping_add(addr as usize));
        }
    }

    /// The bytes from UMEM offset `addr` to the end of its chunk: a received
    /// frame and the room after it. `None` if `addr` is outside the UMEM.
    ///
    /// The caller must own the chunk (taken from the RX or completion ring,
    /// not yet given back to the fill or TX ring); the frame pool upholds that.
    #[inline]
    pub(super) fn frame_mut(&mut self, addr: u64) -> Option<&mut [u8]> {
        let chunk_end = self
            .chunk_of(addr)
            .checked_add(u64::from(self.frame_size))?;
        if chunk_end > self.area.len() as u64 {
            return None;
        }
        let start = addr as usize;
        let len = (chunk_end - addr) as usize;
        // SAFETY: [start, start + len) lies inside the mapping (checked above),
        // and `&mut self` makes this the only Rust reference into it. The
        // kernel does not touch a chunk while userspace owns it.
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.ptr().as_ptr().add(start), len) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_bounded_by_their_chunk_and_the_area() {
        let mut u = Umem::new(4, 2048).unwrap();
        assert_eq!(u.chunks().collect::<Vec<_>>(), vec![0, 2048, 4096, 6144]);
        assert_eq!(u.frame_mut(0).unwrap().len(), 2048);
        assert_eq!(u.frame_mut(2048 + 256).unwrap().len(), 2048 - 256);
        assert_eq!(u.chunk_of(6144 + 300), 6144);
        assert!(u.frame_mut(8192).is_none());
        assert!(u.frame_mut(u64::MAX).is_none());
        u.frame_mut(6144 + 2047).unwrap()[0] = 7;
        assert_eq!(u.frame_mut(6144).unwrap()[2047], 7);
    }
}
