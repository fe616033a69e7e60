//! The in-flight table: queries forwarded to a backend and not yet answered,
//! in memory shared by every dataplane of the instance.
//!
//! Each region is a ring: the owner's cursor advances one slot per query, so
//! the slot under it holds the oldest query of the region. If that query is
//! still unanswered when the cursor comes round, it is evicted (given up,
//! counted), as dnsdist reuses its oldest IDs: insertion is O(1) and an
//! overloaded backend cannot clog the table for a whole timeout.
//!
//! Queue `q` owns region `q` and alone inserts into it and expires it; any
//! dataplane may claim a slot when the backend's reply reaches it (replies
//! arrive on whatever queue RSS picks). A claim is one compare-and-swap on the
//! slot's state word, so a duplicate reply finds the slot already free. The
//! state word carries a generation that changes on every insert, and the
//! backend-leg DNS ID carries its low bits, so a late reply cannot claim a
//! reused slot. All slot contents are atomic words: no data races even while
//! a claim and a reuse overlap (the CAS then fails and the read is discarded).

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use xdpdns_common::inflight::{MAX_QUESTION, SLOT_WORDS};

use super::{SharedRegion, ShmError};

const FREE: u64 = 0;
const IN_USE: u64 = 1;
/// Words before the question.
const HEADER_WORDS: usize = 10;

/// Where the answer for a forwarded query must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Arrived over AF_XDP (answer as a frame) or a kernel socket.
    pub xsk: bool,
    pub v6: bool,
    pub vlan: Option<u16>,
    pub mac: [u8; 6],
    pub ip: [u8; 16],
    pub port: u16,
    /// Our address and port the query was sent to.
    pub local_ip: [u8; 16],
    pub local_port: u16,
    /// The client's DNS ID.
    pub id: u16,
    /// The query's header flags word (opcode, RD, CD), for answers made
    /// without the backend (timeouts).
    pub flags: u16,
    /// The query had an OPT record; with DO set.
    pub edns: bool,
    pub dnssec_ok: bool,
}

/// One in-flight query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub deadline_ms: u64,
    pub sent_ns: u64,
    /// The backend's tag (stable across reloads, unlike its index).
    pub backend: u16,
    pub client: Client,
    pub question_len: u16,
    pub question: [u8; MAX_QUESTION],
}

impl Entry {
    pub fn question(&self) -> &[u8] {
        &self.question[..usize::from(self.question_len).min(MAX_QUESTION)]
    }
}

/// Why a reply could not be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// The slot is in use for this ID, but the caller's check refused it
    /// (e.g. another question): the slot stays for the real reply.
    Mismatch,
    /// No such slot, or its generation or backend does not match: a stray,
    /// forged or very late reply.
    Unknown,
    /// The slot was free or claimed by someone else first: a duplicate.
    Taken,
}

/// Shared memory holding `queues × per_queue` slots.
pub struct Table {
    region: SharedRegion,
    per_queue: u32,
    shift: u32,
    regions: u32,
}

/// A slot taken for a new query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The DNS ID to send the query with.
    pub id: u16,
    /// The backend of the oldest query, evicted unanswered to make room.
    pub evicted: Option<u16>,
}

/// The owner's cursor: the next slot of its region to use.
pub struct Allocator {
    queue: u32,
    next: u32,
}

impl Table {
    /// Maps the table the loader created (`fd`) for `regions` queues.
    pub fn open(fd: BorrowedFd<'_>, regions: u32, per_queue: u32) -> Result<Table, ShmError> {
        let len = xdpdns_common::inflight::table_bytes(regions, per_queue) as usize;
        Table::new(SharedRegion::map(fd, len)?, regions, per_queue)
    }

    /// A table in anonymous shared memory (tests, or a single process).
    pub fn anonymous(regions: u32, per_queue: u32) -> Result<Table, ShmError> {
        let len = xdpdns_common::inflight::table_bytes(regions, per_queue) as usize;
        Table::new(SharedRegion::anonymous(len)?, regions, per_queue)
    }

    fn new(region: SharedRegion, regions: u32, per_queue: u32) -> Result<Table, ShmError> {
        let want = regions as usize * per_queue as usize * SLOT_WORDS;
        if !per_queue.is_power_of_two() || per_queue > 4096 || region.words().len() < want {
            return Err(ShmError::Size {
                have: region.words().len() as u64 * 8,
                want: want as u64 * 8,
            });
        }
        Ok(Table {
            region,
            per_queue,
            shift: per_queue.trailing_zeros(),
            regions,
        })
    }

    pub fn per_queue(&self) -> u32 {
        self.per_queue
    }

    pub fn allocator(&self, queue: u32) -> Allocator {
        Allocator { queue, next: 0 }
    }

    /// The words of slot `index` (global), or `None` if out of range.
    fn slot(&self, queue: u32, index: u32) -> Option<&[AtomicU64]> {
        if queue >= self.regions || index >= self.per_queue {
            return None;
        }
        let start = (queue as usize * self.per_queue as usize + index as usize) * SLOT_WORDS;
        self.region.words().get(start..start + SLOT_WORDS)
    }

    /// The backend-leg DNS ID of slot `index` at generation `gen`.
    fn id(&self, index: u32, generation: u64) -> u16 {
        let gen_bits = 16 - self.shift;
        let low = (generation & ((1u64 << gen_bits) - 1)) as u32;
        ((low << self.shift) | index) as u16
    }

    /// Stores `entry` in the slot under the allocator's cursor, evicting the
    /// query there if it is still in flight (the region's oldest). `None`
    /// only if the allocator's queue has no region.
    pub fn insert(&self, alloc: &mut Allocator, entry: &Entry) -> Option<Inserted> {
        let index = alloc.next;
        let words = self.slot(alloc.queue, index)?;
        alloc.next = (alloc.next + 1) & (self.per_queue - 1);
        let state = words[0].load(Ordering::Acquire);
        // Only the owner turns a slot IN_USE; others only free it, keeping
        // the generation. So after this the slot is free at `state`'s
        // generation, whoever freed it.
        let freed = (state & !0xff) | FREE;
        let mut evicted = None;
        if state & 0xff == IN_USE {
            let backend = words[3].load(Ordering::Relaxed) as u16;
            if words[0]
                .compare_exchange(state, freed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                evicted = Some(backend);
            }
        }
        let generation = (freed >> 32).wrapping_add(1) & 0xffff_ffff;
        write_entry(words, entry);
        // Publishes the entry: its words happen-before any claimer's read.
        words[0].store((generation << 32) | IN_USE, Ordering::Release);
        Some(Inserted {
            id: self.id(index, generation),
            evicted,
        })
    }

    /// Claims the slot a reply to `queue`'s port with DNS ID `id` from
    /// `backend` belongs to, freeing it. Exactly one claimer succeeds.
    pub fn claim(&self, queue: u32, id: u16, backend: u16) -> Result<Entry, ClaimError> {
        self.claim_if(queue, id, backend, |_| true)
    }

    /// Like [`Table::claim`], but only if `check` accepts the entry.
    pub fn claim_if(
        &self,
        queue: u32,
        id: u16,
        backend: u16,
        check: impl FnOnce(&Entry) -> bool,
    ) -> Result<Entry, ClaimError> {
        let index = u32::from(id) & (self.per_queue - 1);
        let words = self.slot(queue, index).ok_or(ClaimError::Unknown)?;
        let state = words[0].load(Ordering::Acquire);
        if state & 0xff != IN_USE {
            return Err(ClaimError::Taken);
        }
        if self.id(index, state >> 32) != id {
            return Err(ClaimError::Unknown);
        }
        let entry = read_entry(words);
        if entry.backend != backend {
            return Err(ClaimError::Unknown);
        }
        if !check(&entry) {
            return Err(ClaimError::Mismatch);
        }
        let freed = (state & !0xff) | FREE;
        words[0]
            .compare_exchange(state, freed, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| entry)
            .map_err(|_| ClaimError::Taken)
    }

    /// Frees the owner's slots whose deadline passed, handing each to `f`.
    pub fn expire(&self, queue: u32, now_ms: u64, mut f: impl FnMut(&Entry)) -> usize {
        let mut n = 0;
        for index in 0..self.per_queue {
            let Some(words) = self.slot(queue, index) else {
                break;
            };
            let state = words[0].load(Ordering::Acquire);
            if state & 0xff != IN_USE || words[1].load(Ordering::Relaxed) > now_ms {
                continue;
            }
            let entry = read_entry(words);
            let freed = (state & !0xff) | FREE;
            if words[0]
                .compare_exchange(state, freed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                f(&entry);
                n += 1;
            }
        }
        n
    }

    /// Slots of `queue` in flight now.
    pub fn in_flight(&self, queue: u32) -> u32 {
        (0..self.per_queue)
            .filter_map(|i| self.slot(queue, i))
            .filter(|w| w[0].load(Ordering::Relaxed) & 0xff == IN_USE)
            .count() as u32
    }
}

fn pack(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(b)
}

fn write_entry(w: &[AtomicU64], e: &Entry) {
    let c = &e.client;
    let flags = u64::from(c.xsk)
        | (u64::from(c.v6) << 1)
        | (u64::from(c.vlan.is_some()) << 2)
        | (u64::from(c.edns) << 3)
        | (u64::from(c.dnssec_ok) << 4);
    let put = |i: usize, v: u64| w[i].store(v, Ordering::Relaxed);
    put(1, e.deadline_ms);
    put(2, e.sent_ns);
    put(
        3,
        u64::from(e.backend) | (u64::from(c.id) << 16) | (flags << 32) | (u64::from(c.flags) << 48),
    );
    put(
        4,
        u64::from(c.vlan.unwrap_or(0))
            | (u64::from(c.port) << 16)
            | (u64::from(c.local_port) << 32)
            | (u64::from(e.question_len) << 48),
    );
    put(5, pack(&c.mac));
    put(6, pack(&c.ip[..8]));
    put(7, pack(&c.ip[8..]));
    put(8, pack(&c.local_ip[..8]));
    put(9, pack(&c.local_ip[8..]));
    let q = e.question();
    for (i, chunk) in q.chunks(8).enumerate() {
        put(HEADER_WORDS + i, pack(chunk));
    }
}

fn read_entry(w: &[AtomicU64]) -> Entry {
    let get = |i: usize| w[i].load(Ordering::Relaxed);
    let w3 = get(3);
    let w4 = get(4);
    let flags = w3 >> 32;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&get(5).to_le_bytes()[..6]);
    let mut ip = [0u8; 16];
    ip[..8].copy_from_slice(&get(6).to_le_bytes());
    ip[8..].copy_from_slice(&get(7).to_le_bytes());
    let mut local_ip = [0u8; 16];
    local_ip[..8].copy_from_slice(&get(8).to_le_bytes());
    local_ip[8..].copy_from_slice(&get(9).to_le_bytes());
    let question_len = ((w4 >> 48) as u16).min(MAX_QUESTION as u16);
    let mut question = [0u8; MAX_QUESTION];
    for (i, chunk) in question[..usize::from(question_len)]
        .chunks_mut(8)
        .enumerate()
    {
        let bytes = get(HEADER_WORDS + i).to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    Entry {
        deadline_ms: get(1),
        sent_ns: get(2),
        backend: w3 as u16,
        client: Client {
            xsk: flags & 1 != 0,
            v6: flags & 2 != 0,
            vlan: (flags & 4 != 0).then_some(w4 as u16),
            mac,
            ip,
            port: (w4 >> 16) as u16,
            local_ip,
            local_port: (w4 >> 32) as u16,
            id: (w3 >> 16) as u16,
            flags: (w3 >> 48) as u16,
            edns: flags & 8 != 0,
            dnssec_ok: flags & 16 != 0,
        },
        question_len,
        question,
    }
}

#[cfg(test)]
mod tests;
