//! The xdpdns dataplane: one process per NIC queue, unprivileged.
//!
//! It owns the queue's AF_XDP socket and UMEM ([`xsk`]), answers what arrives
//! there and on the kernel-path sockets the loader hands it ([`answer`]), and
//! reports counters to the loader ([`control`]). It never calls bpf().

pub mod answer;
pub mod control;
pub mod dns;
pub mod forward;
pub mod frame;
pub mod kernel_path;
pub mod privileges;
pub mod rules;
pub mod sandbox;
#[doc(hidden)]
pub mod testing;
pub mod worker;
pub mod xsk;
