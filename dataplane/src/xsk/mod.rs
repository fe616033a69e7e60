//! AF_XDP: socket, UMEM and rings. This module holds all raw pointer work on
//! kernel-shared memory (`ring`, `umem`) and the system calls (`sys`); what it
//! exports is safe to use.

mod ring;
mod socket;
mod sys;
mod umem;

pub use ring::{Consumer, Producer, Reader, Writer};
pub use socket::{Xsk, XskConfig, XskError};
pub use sys::Mapping as SharedMapping;
pub use umem::Umem;
pub use xdpilone::xdp::XdpDesc;
