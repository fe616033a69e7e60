//! Facts about the machine the loader reads before touching anything:
//! the interface, locked-memory limits, capabilities, bpffs, users, CPUs,
//! sysctls.

pub mod bpffs;
pub mod capabilities;
pub mod cpus;
pub mod interface;
pub mod memlock;
pub mod netlink;
pub mod nofile;
pub mod sysctl;
pub mod users;
