//! Messages between the loader and a dataplane over their socketpair.
//!
//! The transport is a `SOCK_SEQPACKET` unix socketpair: one message per
//! packet, encoded with MessagePack (rmp-serde). File descriptors travel
//! beside a message as `SCM_RIGHTS`; which message carries which fds is part
//! of each message's documentation. This module only encodes and decodes.

use std::net::{IpAddr, SocketAddr};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{AnswerSpec, FailAction, Policy, XskBindMode};
use crate::stats::DataplaneCounters;

pub mod workers;

/// Bumped whenever a message changes shape; both sides must agree.
pub const PROTOCOL_VERSION: u32 = 5;

/// The dataplane finds its end of the socketpair at this descriptor.
pub const CONTROL_FD: i32 = 3;

/// Largest message either side sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Largest message the loader sends to a worker through a memfd: a
/// message above [`MAX_MESSAGE_BYTES`] (rules with a large `qname_file`)
/// travels as a sealed memfd, the first descriptor of a packet holding
/// only [`blob_header`]. Workers read it with this bound.
pub const MAX_BLOB_BYTES: usize = 128 << 20;

/// Marks a packet whose message is in the memfd beside it.
const BLOB_MAGIC: [u8; 8] = *b"XDPDNS\x00B";

/// The packet announcing a message of `len` bytes in a memfd.
pub fn blob_header(len: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&BLOB_MAGIC);
    h[8..].copy_from_slice(&(len as u64).to_be_bytes());
    h
}

/// The length a blob header announces, if `packet` is one.
pub fn blob_len(packet: &[u8]) -> Option<u64> {
    if packet.len() != 16 || packet[..8] != BLOB_MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(packet[8..].try_into().ok()?))
}

/// Most descriptors one message carries (the kernel's SCM_MAX_FD is 253).
/// More follow in [`ToDataplane::MoreFds`] messages.
pub const MAX_FDS: usize = 250;

/// Most descriptors a dataplane accepts with one Init or Reconfigure.
pub const MAX_DESCRIPTORS: u32 = 16384;

/// What the loader tells a dataplane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToDataplane {
    /// First message. Its `descriptors` are: one UDP socket per
    /// `kernel_sockets` entry, in that order, bound by the loader for the
    /// kernel path; then forwarding's (see [`ForwardSpec`]). The first
    /// [`MAX_FDS`] come with it, the rest in `MoreFds` right after.
    Init(Box<DataplaneInit>),
    /// New answer rules and kernel-path sockets (a reload), replacing the
    /// previous ones; descriptors as for Init, without the in-flight table.
    Reconfigure(Box<Reconfigure>),
    /// More descriptors of the Init or Reconfigure just sent.
    MoreFds,
    /// Health and next-hop MAC of every backend, in `ForwardSpec` order.
    Backends(Vec<BackendLive>),
    /// Finish what is in flight and exit 0.
    Shutdown,
    /// Remove these entries from the shared packet cache (counted as
    /// `purged`).
    PurgeCache(CachePurge),
}

/// Packet cache entries to remove: those for `name` (wire format, lower
/// case), or at or below it with `suffix`; of `qtype` only, if given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePurge {
    pub name: Vec<u8>,
    pub qtype: Option<u16>,
    pub suffix: bool,
}

/// Where unanswered queries go. Comes with Init or Reconfigure; its
/// descriptors follow the kernel-path sockets: the in-flight table (memfd,
/// with Init only), then `backend_sockets` UDP sockets per
/// backend, in backend order, then one receiving socket per family of
/// `steered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardSpec {
    pub backends: Vec<BackendSpec>,
    pub pools: Vec<PoolSpec>,
    /// The pool unmatched queries go to.
    pub default_pool: u16,
    pub timeout_ms: u32,
    pub timeout_action: FailAction,
    pub all_down_action: FailAction,
    /// AF_XDP forwarding draws a source port per query from
    /// `port_base .. port_base + ports` (shared by all queues).
    pub port_base: u16,
    pub ports: u32,
    /// Sockets per backend (one drawn per query).
    pub backend_sockets: u32,
    /// The families (false = IPv4) whose socket backends' replies the
    /// loader steers (sk_lookup) from the pool sockets to one receiving
    /// socket per family, which reports each reply's destination port;
    /// empty when steering is off (replies arrive on the pool sockets).
    #[serde(default)]
    pub steered: Vec<bool>,
    /// UMEM frame size and the interface MTU: what a reply arriving over
    /// AF_XDP can be at most (forwarded queries ask for no more).
    pub frame_size: u32,
    pub mtu: u32,
    /// Slots per queue in the in-flight table.
    pub max_in_flight: u32,
    /// Queue regions in the table (the device's queue count).
    pub regions: u32,
    /// The interface's MAC: source of every frame we build.
    pub local_mac: [u8; 6],
    /// Initial health and MACs.
    pub live: Vec<BackendLive>,
    /// The shared packet cache, if there is one (its memfd comes with Init,
    /// after the in-flight table's).
    #[serde(default)]
    pub cache: Option<CacheSpec>,
}

/// The packet cache as the dataplanes use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSpec {
    /// Entries (a power of two): the region is `cache::table_bytes(slots)`.
    pub slots: u32,
    pub ttls: crate::config::CacheTtls,
    /// Keys of the entry hash, drawn by the loader per instance: a client
    /// cannot pick names that collide.
    pub key: (u64, u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendSpec {
    /// Identifies the backend in the in-flight table: the same address
    /// keeps its tag across reloads, so queries in flight to a backend kept
    /// by a reload still match its replies.
    pub tag: u16,
    pub address: SocketAddr,
    /// Our address toward it.
    pub source: IpAddr,
    pub xsk: bool,
    pub weight: u32,
    pub pool: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    pub policy: Policy,
    pub members: Vec<u16>,
    /// Its answers go through the packet cache (if there is one).
    #[serde(default)]
    pub cache: bool,
}

impl ForwardSpec {
    /// The descriptors forwarding adds to an Init (`with_table`) or a
    /// Reconfigure.
    pub fn descriptors(&self, with_table: bool) -> usize {
        usize::from(with_table)
            + usize::from(with_table && self.cache.is_some())
            + self.backends.len() * self.backend_sockets as usize
            + self.steered.len()
    }
}

/// A backend's state as the loader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendLive {
    pub up: bool,
    /// Next-hop MAC for AF_XDP (its own, or its gateway's).
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconfigure {
    pub answer: AnswerSpec,
    pub kernel_sockets: Vec<SocketAddr>,
    pub forward: Option<ForwardSpec>,
    /// Descriptors that come with it (this message and `MoreFds`).
    pub descriptors: u32,
}

/// Everything a dataplane needs to serve its queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataplaneInit {
    pub protocol: u32,
    pub instance: String,
    pub ifname: String,
    pub ifindex: u32,
    pub queue_id: u32,
    pub frames: u32,
    pub frame_size: u32,
    pub bind_mode: XskBindMode,
    pub batch_size: u32,
    pub idle_nap_us: u32,
    pub stats_interval_ms: u32,
    pub answer: AnswerSpec,
    /// The local address of each kernel-path socket passed with this message.
    pub kernel_sockets: Vec<SocketAddr>,
    pub forward: Option<ForwardSpec>,
    /// Descriptors that come with it (this message and `MoreFds`).
    pub descriptors: u32,
}

/// What a dataplane tells the loader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromDataplane {
    /// The AF_XDP socket is bound and its fill ring stocked. Carries the
    /// socket's descriptor, for the loader to put in the XSKMAP.
    Ready(XskReady),
    /// Periodic counters; also the dataplane's heartbeat.
    Stats(Box<DataplaneCounters>),
    /// Setup failed; the dataplane exits after sending this.
    Failed(SetupFailure),
    /// Answers per client since the last report, for the dynamic block
    /// rules (only when the answer spec asks for a tally): at most
    /// [`MAX_CLIENT_COUNTS`] entries, each prefix masked to the spec's length.
    Clients(Vec<ClientCount>),
}

/// Client prefixes one report carries at most.
pub const MAX_CLIENT_COUNTS: usize = 512;

/// What one dataplane answered one client prefix since its last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCount {
    pub v6: bool,
    /// The prefix's address, masked; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    pub answers: u32,
    /// Answers by rcode 0..16 that the rules can count: NXDOMAIN (3),
    /// SERVFAIL (2), REFUSED (5).
    pub nxdomain: u32,
    pub servfail: u32,
    pub refused: u32,
    /// Bytes of DNS answers (payloads).
    #[serde(default)]
    pub bytes: u32,
    /// Per suffix of the tally spec (by index): answers of its kind to
    /// names under it (bytes for a bytes rule); zero past the spec's
    /// suffixes.
    #[serde(default)]
    pub under: [u32; crate::config::MAX_SUFFIX_RULES],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XskReady {
    pub protocol: u32,
    pub zero_copy: bool,
    pub umem_bytes: u64,
    pub ring_size: u32,
}

/// Why a dataplane could not start, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupFailure {
    /// What was being done: "umem registration", "bind", ...
    pub stage: String,
    pub error: String,
    pub errno: Option<i32>,
}

/// Encoding or decoding a message failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("message of {0} bytes exceeds its limit")]
    TooLarge(usize),
}

/// Encodes a message for one SEQPACKET send.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, IpcError> {
    let bytes = rmp_serde::to_vec_named(msg)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(IpcError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Encodes a message the loader may send as a blob (up to
/// [`MAX_BLOB_BYTES`]).
pub fn encode_large<T: Serialize>(msg: &T) -> Result<Vec<u8>, IpcError> {
    let bytes = rmp_serde::to_vec_named(msg)?;
    if bytes.len() > MAX_BLOB_BYTES {
        return Err(IpcError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes one received packet.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, IpcError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(IpcError::TooLarge(bytes.len()));
    }
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Decodes a message read from a blob.
pub fn decode_large<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, IpcError> {
    if bytes.len() > MAX_BLOB_BYTES {
        return Err(IpcError::TooLarge(bytes.len()));
    }
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn init() -> DataplaneInit {
        let cfg = Config::from_toml(
            "[xdp]\ninterface = \"eth0\"\n[[listen]]\naddress = \"192.0.2.1:53\"\n[[rule]]\nqname_suffix = \"x.\"\naction = \"drop\"\n",
        )
        .unwrap();
        DataplaneInit {
            protocol: PROTOCOL_VERSION,
            instance: cfg.fixed.instance.clone(),
            ifname: "eth0".into(),
            ifindex: 2,
            queue_id: 1,
            frames: 1024,
            frame_size: 2048,
            bind_mode: XskBindMode::Auto,
            batch_size: 64,
            idle_nap_us: 20,
            stats_interval_ms: 1000,
            answer: cfg.live.answer_spec(),
            kernel_sockets: vec!["192.0.2.1:53".parse().unwrap()],
            forward: None,
            descriptors: 1,
        }
    }

    #[test]
    fn messages_round_trip() {
        let msg = ToDataplane::Init(Box::new(init()));
        let back: ToDataplane = decode(&encode(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
        let mut c = DataplaneCounters::new();
        c.xsk.received = 42;
        let msg = FromDataplane::Stats(Box::new(c));
        let back: FromDataplane = decode(&encode(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\xff\xff\xff", b"\x81\xa4Init\xc0", &[0x91; 200]] {
            assert!(decode::<ToDataplane>(bytes).is_err());
            assert!(decode::<FromDataplane>(bytes).is_err());
        }
        let huge = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<ToDataplane>(&huge),
            Err(IpcError::TooLarge(_))
        ));
    }
}
