//! Ethernet/IP/UDP frames: parse a received frame, and turn it into the reply
//! in place once the DNS answer has been written into its payload.

mod build;
pub mod checksum;
mod parse;
mod reply;

#[doc(hidden)]
pub mod testing;

pub use build::{Headers, write_headers};
pub use parse::{Family, Parsed, parse, udp_checksum_ok};
pub use reply::write_reply;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_UDP: u8 = 17;

/// TTL / hop limit of our answers.
pub const REPLY_TTL: u8 = 64;
