//! Who owns each UMEM chunk, and the queue of frames waiting for the TX ring.
//!
//! Every chunk is, at any moment, in exactly one place (after Firedancer's
//! `fd_xsk.h`):
//!
//! | place            | owner     | leaves by                                |
//! |------------------|-----------|------------------------------------------|
//! | fill ring        | kernel    | RX ring (a frame arrived)                |
//! | RX ring          | kernel    | [`super::Xsk::receive`]: in hand         |
//! | in hand          | userspace | backlog (transmit) or free list          |
//! | free list        | userspace | fill ring, or in hand for a built frame  |
//! | backlog          | userspace | TX ring, when it has room                |
//! | TX ring          | kernel    | completion ring (sent)                   |
//! | completion ring  | kernel    | free list ([`super::Xsk::reclaim`])      |
//!
//! Only this module and `socket.rs` move chunks between places; the rest of
//! the dataplane sees a chunk only inside a callback that cannot keep it.
//! The pool never holds a chunk twice: the counts of all places add up to the
//! number of chunks (checked by the tests).

use std::collections::VecDeque;

/// Chunks userspace holds: free ones, and frames waiting for the TX ring.
pub(super) struct FramePool {
    /// Unused chunks, as UMEM offsets of their start.
    free: Vec<u64>,
    /// Frames to transmit (descriptors), oldest first.
    backlog: VecDeque<libc::xdp_desc>,
}

impl FramePool {
    /// A pool owning every chunk of `chunks`.
    pub(super) fn new(chunks: impl Iterator<Item = u64>, capacity: usize) -> Self {
        let mut free = Vec::with_capacity(capacity);
        free.extend(chunks);
        FramePool {
            free,
            backlog: VecDeque::with_capacity(capacity),
        }
    }

    pub(super) fn free_count(&self) -> usize {
        self.free.len()
    }

    pub(super) fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    pub(super) fn take_free(&mut self) -> Option<u64> {
        self.free.pop()
    }

    pub(super) fn give_back(&mut self, chunk: u64) {
        debug_assert!(
            self.free.len() < self.free.capacity() || self.free.capacity() == 0,
            "more chunks returned than exist"
        );
        self.free.push(chunk);
    }

    pub(super) fn queue(&mut self, desc: libc::xdp_desc) {
        self.backlog.push_back(desc);
    }

    /// The oldest queued frame, if any.
    pub(super) fn next_queued(&mut self) -> Option<libc::xdp_desc> {
        self.backlog.pop_front()
    }

    /// Puts back a frame that found no room in the TX ring.
    pub(super) fn requeue(&mut self, desc: libc::xdp_desc) {
        self.backlog.push_front(desc);
    }
}
