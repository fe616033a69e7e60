//! AF_XDP: socket, UMEM and rings. This module holds all raw pointer work on
//! kernel-shared memory (`ring`, `umem`) and the system calls (`sys`), and it
//! alone moves UMEM chunks between the rings, the free list and the TX
//! backlog (`pool`, whose header states the ownership model). What it
//! exports is safe: a frame is reachable only inside a callback of
//! [`Xsk::receive`] or [`Xsk::build`], as a slice of a chunk userspace owns
//! for the duration of the call.

mod pool;
mod ring;
mod socket;
mod sys;
mod umem;

pub use socket::{Fate, KICK_BATCH, Rx, Tx, Xsk, XskConfig, XskError};

#[cfg(test)]
mod tests;
