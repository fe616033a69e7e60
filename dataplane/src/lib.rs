//! The xdpdns dataplane: one process per NIC queue, unprivileged.
//!
//! It owns the queue's AF_XDP socket and UMEM ([`xsk`]) and the kernel-path
//! sockets the loader hands it ([`kernel_path`]); every query from either is
//! decided by the one [`pipeline`], carried out by the [`engine`] (answers in
//! place, forwarding with [`forward`] over the shared in-flight table in
//! [`shm`]). It reports counters to the loader ([`control`]) and never calls
//! bpf().

pub mod control;
pub mod dns;
pub mod engine;
pub mod forward;
pub mod frame;
#[cfg(feature = "test-hooks")]
pub mod hooks;
pub mod kernel_path;
pub mod mmsg;
pub mod pipeline;
pub mod poller;
pub mod prefetch;
pub mod privileges;
pub mod sandbox;
pub mod shm;
pub mod tally;
#[doc(hidden)]
pub mod testing;
pub mod worker;
pub mod xsk;
