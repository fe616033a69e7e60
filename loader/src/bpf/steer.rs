//! Socket-reply steering (bpf/steer.bpf.c): an sk_lookup program attached to
//! the loader's network namespace hands the replies that arrive on a
//! dataplane's pool sockets (`[forwarding] backend_sockets` sockets per
//! backend) to that dataplane's one receiving socket per family.
//! A dataplane then reads all its socket backends' replies in a few
//! `recvmmsg` calls on one socket instead of one call per pool socket; the
//! destination port each reply came to arrives with it (IP_ORIGDSTADDR), so
//! the port check of RFC 5452 stands.
//!
//! Best effort by design: without it (a kernel that refuses the program, a
//! full map) replies land on the pool sockets, connected, which the
//! dataplanes watch as well. Steered pool sockets are not connected (the
//! kernel finds a connected socket before it runs sk_lookup programs), so
//! the program plays the connection's part: it steers what comes to a live
//! pool socket from its backend and drops what comes from anyone else (see
//! the C file); nothing else in the namespace is affected. It lives as long as the loader: not
//! pinned, detached when the loader exits.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, SockHash, SockMap};
use aya::programs::{ProgramError, SkLookup};
use aya::{Ebpf, EbpfError, EbpfLoader};

/// The compiled program, embedded at build time (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

const PROGRAM: &str = "xdpdns_steer";
const MAP_POOL: &str = "steer_pool";
const MAP_OWNER: &str = "steer_owner";
const MAP_RX: &str = "steer_rx";
const MAP_STATS: &str = "steer_stats";

/// Pool sockets the maps hold at most (each one a local (address, port), so
/// never more than the ports of a few addresses).
const MAX_POOL_SOCKETS: u32 = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("cannot load the steering program: {0}")]
    Load(Box<EbpfError>),
    #[error("the steering object has no {0}")]
    Missing(&'static str),
    #[error("steering program: {0}")]
    Program(Box<ProgramError>),
    #[error("steering map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<MapError>,
    },
    #[error("cannot open the network namespace: {0}")]
    Netns(std::io::Error),
    #[error("a forwarding socket has no local address: {0}")]
    Socket(std::io::Error),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> SteerError {
    move |e| SteerError::Map {
        name,
        source: Box::new(e),
    }
}

/// A socket's local end as the program looks it up: matches `struct
/// steer_key` of bpf/steer.bpf.c.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SteerKey {
    family: u32,
    /// Network order; IPv4 in `ip[0]`, the rest zero.
    ip: [u32; 4],
    /// Host order.
    port: u32,
}

// SAFETY: repr(C) of u32s only, no padding: every byte pattern is a value,
// and the kernel reads and writes it as plain bytes.
unsafe impl aya::Pod for SteerKey {}

/// Where a pool socket's replies go and who may send them: matches `struct
/// steer_owner` of bpf/steer.bpf.c.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SteerOwner {
    /// Index of the receiving socket (see [`rx_index`]).
    rx: u32,
    /// The backend: network order, IPv4 in `peer_ip[0]`.
    peer_ip: [u32; 4],
    /// Network order, in the low 16 bits.
    peer_port: u32,
}

// SAFETY: as for SteerKey.
unsafe impl aya::Pod for SteerOwner {}

impl SteerOwner {
    fn new(rx: u32, peer: SocketAddr) -> SteerOwner {
        let k = SteerKey::of(peer);
        SteerOwner {
            rx,
            peer_ip: k.ip,
            peer_port: u32::from(peer.port().to_be()),
        }
    }
}

impl SteerKey {
    fn of(local: SocketAddr) -> SteerKey {
        let mut ip = [0u32; 4];
        let family = match local.ip() {
            IpAddr::V4(v) => {
                ip[0] = u32::from_ne_bytes(v.octets());
                libc::AF_INET as u32
            }
            IpAddr::V6(v) => {
                for (w, c) in ip.iter_mut().zip(v.octets().chunks_exact(4)) {
                    *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                }
                libc::AF_INET6 as u32
            }
        };
        SteerKey {
            family,
            ip,
            port: u32::from(local.port()),
        }
    }
}

/// What the program did, summed over CPUs (`enum` of bpf/steer.bpf.c).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SteerCounters {
    /// Handed to the dataplane's receiving socket.
    pub steered: u64,
    /// To a pool socket from anyone but its backend: dropped, as a
    /// connected socket would.
    pub not_peer: u64,
    /// To a pool socket of a dataplane without a receiving socket (it is
    /// restarting): left on the pool socket.
    pub no_receiver: u64,
    /// The kernel refused the hand-over: left on the pool socket.
    pub refused: u64,
}

/// Where receiver `queue`, family `v6` sits in the receiver map.
fn rx_index(queue: u32, v6: bool) -> u32 {
    queue * 2 + u32::from(v6)
}

/// The attached program and its maps.
pub struct ReplySteer {
    /// Owns the program and its link (dropped: detached).
    _ebpf: Ebpf,
    pool: SockHash<MapData, SteerKey>,
    owner: HashMap<MapData, SteerKey, SteerOwner>,
    rx: SockMap<MapData>,
    stats: PerCpuArray<MapData, u64>,
    /// Per receiver index, the keys registered for it by the last two
    /// registrations (the previous set may still be open: a dataplane keeps
    /// its old sockets until it has taken the new ones).
    registered: StdHashMap<u32, [Vec<SteerKey>; 2]>,
}

impl ReplySteer {
    /// Loads the program and attaches it to the loader's network namespace,
    /// for dataplanes of queues below `queues`.
    pub fn attach(queues: u32) -> Result<ReplySteer, SteerError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_RX, queues.max(1) * 2)
            .map_max_entries(MAP_POOL, MAX_POOL_SOCKETS)
            .map_max_entries(MAP_OWNER, MAX_POOL_SOCKETS)
            .load(OBJECT)
            .map_err(|e| SteerError::Load(Box::new(e)))?;
        let prog: &mut SkLookup = ebpf
            .program_mut(PROGRAM)
            .ok_or(SteerError::Missing(PROGRAM))?
            .try_into()
            .map_err(|e| SteerError::Program(Box::new(e)))?;
        prog.load().map_err(|e| SteerError::Program(Box::new(e)))?;
        let netns = File::open("/proc/self/ns/net").map_err(SteerError::Netns)?;
        prog.attach(netns.as_fd())
            .map_err(|e| SteerError::Program(Box::new(e)))?;
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(SteerError::Missing(name));
        let pool = SockHash::try_from(take(MAP_POOL)?).map_err(map_err(MAP_POOL))?;
        let owner = HashMap::try_from(take(MAP_OWNER)?).map_err(map_err(MAP_OWNER))?;
        let rx = SockMap::try_from(take(MAP_RX)?).map_err(map_err(MAP_RX))?;
        let stats = PerCpuArray::try_from(take(MAP_STATS)?).map_err(map_err(MAP_STATS))?;
        Ok(ReplySteer {
            _ebpf: ebpf,
            pool,
            owner,
            rx,
            stats,
            registered: StdHashMap::new(),
        })
    }

    /// Steers replies arriving on `pool` (UDP sockets of family `v6`, each
    /// with the backend it sends to) to `receiver`, dataplane `queue`'s
    /// receiving socket of that family, which replaces the one registered
    /// before. The keys of the registration before the previous one are
    /// dropped (their sockets are closed by now; if not, their replies
    /// simply stay on them).
    pub fn register(
        &mut self,
        queue: u32,
        v6: bool,
        receiver: &OwnedFd,
        pool: &[(&OwnedFd, SocketAddr)],
    ) -> Result<(), SteerError> {
        let index = rx_index(queue, v6);
        let keys = pool
            .iter()
            .map(|(fd, _)| {
                let local = socket2::SockRef::from(*fd)
                    .local_addr()
                    .map_err(SteerError::Socket)?;
                local
                    .as_socket()
                    .map(SteerKey::of)
                    .ok_or_else(|| SteerError::Socket(std::io::ErrorKind::InvalidInput.into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let [older, previous] = self.registered.entry(index).or_default();
        let older = std::mem::take(older);
        let keep: HashSet<&SteerKey> = previous.iter().chain(&keys).collect();
        for k in older.iter().filter(|k| !keep.contains(k)) {
            // Its socket closed long since, and the kernel took it out of
            // the pool map then; the same local end may be another queue's
            // pool socket now, whose entries stay.
            if self.owner.get(k, 0).is_ok_and(|o| o.rx == index) {
                let _ = self.pool.remove(k);
                let _ = self.owner.remove(k);
            }
        }
        // Owner first: the program trusts an owner entry only while the
        // pool map holds a live socket under the same key.
        for (k, (fd, peer)) in keys.iter().zip(pool) {
            self.owner
                .insert(k, SteerOwner::new(index, *peer), 0)
                .map_err(map_err(MAP_OWNER))?;
            self.pool
                .insert(k, fd.as_raw_fd(), 0)
                .map_err(map_err(MAP_POOL))?;
        }
        self.rx
            .set(index, &receiver.as_raw_fd(), 0)
            .map_err(map_err(MAP_RX))?;
        let slots = self.registered.entry(index).or_default();
        slots.rotate_left(1);
        slots[1] = keys;
        Ok(())
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<SteerCounters, SteerError> {
        let sum = |i: u32| -> Result<u64, SteerError> {
            Ok(self
                .stats
                .get(&i, 0)
                .map_err(map_err(MAP_STATS))?
                .iter()
                .sum())
        };
        Ok(SteerCounters {
            steered: sum(0)?,
            not_peer: sum(1)?,
            no_receiver: sum(2)?,
            refused: sum(3)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_addresses_in_network_order_and_ports_in_host_order() {
        let k = SteerKey::of("192.0.2.1:4660".parse().unwrap());
        assert_eq!(k.family, libc::AF_INET as u32);
        assert_eq!(k.ip[0].to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(&k.ip[1..], &[0, 0, 0]);
        assert_eq!(k.port, 4660);
        let k = SteerKey::of("[2001:db8::1]:53".parse().unwrap());
        assert_eq!(k.family, libc::AF_INET6 as u32);
        assert_eq!(k.ip[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(k.ip[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(std::mem::size_of::<SteerKey>(), 24);
    }

    #[test]
    fn receivers_of_a_queue_sit_side_by_side() {
        assert_eq!(rx_index(0, false), 0);
        assert_eq!(rx_index(0, true), 1);
        assert_eq!(rx_index(3, true), 7);
    }
}
