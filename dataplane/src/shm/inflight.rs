//! The in-flight table: queries forwarded to a backend and not yet answered,
//! in memory shared by every dataplane of the instance.
//!
//! Each query leaves with a **key** — the source port and DNS ID it is sent
//! with — that the forwarder draws at random per query (see `forward::keys`),
//! so an off-path attacker who has seen any number of earlier keys cannot
//! predict the next. A reply arrives with the same key on whatever queue RSS
//! picks; the **index** (a direct-mapped array of cells, four per slot) turns
//! the key back into its slot in O(1). A freshly drawn key whose cell is
//! taken is simply drawn again, so the index needs no probing and no
//! tombstones.
//!
//! Slots live in one region per queue. Each region is a ring: the owner's
//! cursor advances one slot per query, so the slot under it holds the oldest
//! query of the region; if that is still unanswered when the cursor comes
//! round, it is evicted (given up, counted), as dnsdist reuses its oldest
//! IDs: insertion is O(1) and an overloaded backend cannot clog the table.
//!
//! Queue `q` owns region `q` and alone inserts into it and expires it; any
//! dataplane may claim a slot when the backend's reply reaches it. A claim is
//! one compare-and-swap on the slot's state word, so a duplicate reply finds
//! the slot already free. The state word carries a generation that changes
//! on every insert and the index cell carries its low bits, so a late reply
//! cannot claim a reused slot. All slot contents are atomic words: no data
//! races even while a claim and a reuse overlap (the CAS then fails and the
//! read is discarded).
//!
//! What a hostile writer can do here, and what it cannot: see `shm` (every
//! index, length and slot number read back is bounds-checked, and a reply
//! must match the key, backend and question stored with the query).

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use xdpdns_common::inflight::{
    MAX_QUESTION, MAX_SLOTS, SLOT_HEADER_WORDS, SLOT_WORDS, index_cells,
};

use super::{SharedRegion, ShmError};

const FREE: u64 = 0;
const IN_USE: u64 = 1;
/// A key whose cell is taken is drawn again at most this often.
const KEY_DRAWS: usize = 8;

// Index cells: valid | claimed | generation tag (8 bits) | slot (22 bits) |
// key (32 bits). A claimed cell stays until its slot is reused, so a second
// reply with the same key is known for a duplicate.
const CELL_VALID: u64 = 1 << 63;
const CELL_CLAIMED: u64 = 1 << 62;
const TAG_BITS: u32 = 8;
const TAG_SHIFT: u32 = 54;
const SLOT_SHIFT: u32 = 32;
const SLOT_MASK: u64 = MAX_SLOTS - 1;

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
    /// The packet cache's variant of the query, if its answer may be cached.
    pub cache: Option<u32>,
}

impl Entry {
    pub fn question(&self) -> &[u8] {
        &self.question[..usize::from(self.question_len).min(MAX_QUESTION)]
    }
}

/// A key: the source port (high 16 bits) and DNS ID (low 16 bits) a query
/// is sent with.
pub fn key(port: u16, id: u16) -> u32 {
    (u32::from(port) << 16) | u32::from(id)
}

/// Why a reply could not be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// The slot is in use for this key, but the caller's check refused it
    /// (e.g. another question): the slot stays for the real reply.
    Mismatch,
    /// No query was sent with this key, or not to this backend: a stray,
    /// forged or very late reply.
    Unknown,
    /// The slot was freed (answered, expired) or claimed by someone else
    /// first: a duplicate.
    Taken,
}

/// Slots [`Table::insert`] tries before refusing a query.
pub const PROBES: u32 = 8;

/// Why a query got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Every slot tried holds a query still in flight and too young to give
    /// up: the queue is at its limit.
    Busy,
    /// No free index cell for any key drawn (vanishingly rare).
    NoCell,
    /// The allocator's queue has no region.
    NoRegion,
}

/// A slot taken for a new query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The key (port, ID) to send the query with.
    pub key: u32,
    /// The slot in the owner's region.
    pub index: u32,
    /// The backend (tag) of the oldest query, evicted unanswered to make room.
    pub evicted: Option<u16>,
}

/// A reply's slot, claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub entry: Entry,
    /// The queue whose region the slot is in.
    pub owner: u32,
    /// The slot's index in that region.
    pub index: u32,
}

/// What a sweep of the owner's region finds in a slot.
#[derive(Debug)]
pub enum Swept<'a> {
    /// Free: answered, expired or evicted since it was last used.
    Free,
    /// Its deadline passed: freed now.
    Expired(&'a Entry),
}

/// The owner's cursor: the next slot of its region to use.
pub struct Allocator {
    queue: u32,
    next: u32,
}

/// Shared memory holding `regions × per_queue` slots and their index.
pub struct Table {
    region: SharedRegion,
    per_queue: u32,
    regions: u32,
    /// Word offset of the index.
    index_at: usize,
    index_mask: usize,
}

impl Table {
    /// Maps the table the loader created (`fd`) for `regions` queues.
    pub fn open(fd: BorrowedFd<'_>, regions: u32, per_queue: u32) -> Result<Table, ShmError> {
        let len = xdpdns_common::inflight::table_bytes(regions, per_queue) as usize;
        Table::new(SharedRegion::map(fd, len)?, regions, per_queue)
    }

    /// A table in anonymous shared memory (tests, benchmarks, a single process).
    pub fn anonymous(regions: u32, per_queue: u32) -> Result<Table, ShmError> {
        let len = xdpdns_common::inflight::table_bytes(regions, per_queue) as usize;
        Table::new(SharedRegion::anonymous(len)?, regions, per_queue)
    }

    fn new(region: SharedRegion, regions: u32, per_queue: u32) -> Result<Table, ShmError> {
        let slots = u64::from(regions) * u64::from(per_queue);
        let index_at = slots as usize * SLOT_WORDS;
        let cells = index_cells(regions, per_queue) as usize;
        let want = index_at + cells;
        if !per_queue.is_power_of_two() || slots > MAX_SLOTS || region.words().len() < want {
            return Err(ShmError::Size {
                have: region.words().len() as u64 * 8,
                want: want as u64 * 8,
            });
        }
        Ok(Table {
            region,
            per_queue,
            regions,
            index_at,
            index_mask: cells - 1,
        })
    }

    pub fn per_queue(&self) -> u32 {
        self.per_queue
    }

    pub fn allocator(&self, queue: u32) -> Allocator {
        Allocator { queue, next: 0 }
    }

    /// The words of one slot, or `None` if out of range.
    fn slot(&self, queue: u32, index: u32) -> Option<&[AtomicU64]> {
        if queue >= self.regions || index >= self.per_queue {
            return None;
        }
        let start = (queue as usize * self.per_queue as usize + index as usize) * SLOT_WORDS;
        self.region.words().get(start..start + SLOT_WORDS)
    }

    /// The index cell of `key`. Keys are drawn at random, so their bits are
    /// uniform; the multiplication only folds the port into the ID.
    fn cell(&self, key: u32) -> &AtomicU64 {
        let h = (u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize;
        &self.region.words()[self.index_at + (h & self.index_mask)]
    }

    fn cell_value(key: u32, gslot: u64, generation: u64) -> u64 {
        CELL_VALID
            | ((generation & ((1 << TAG_BITS) - 1)) << TAG_SHIFT)
            | ((gslot & SLOT_MASK) << SLOT_SHIFT)
            | u64::from(key)
    }

    /// Empties the cell of the query that was in `words` at `generation`
    /// (claimed or not), unless it already names something else.
    fn clear_cell(&self, words: &[AtomicU64], gslot: u64, generation: u64) {
        let key = words[10].load(Ordering::Relaxed) as u32;
        let v = Self::cell_value(key, gslot, generation);
        let cell = self.cell(key);
        let now = cell.load(Ordering::Acquire);
        if now & !CELL_CLAIMED == v {
            let _ = cell.compare_exchange(now, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Stores `entry` in a slot of the allocator's region, with a key from
    /// `draw` (drawn again while its index cell is taken). From the cursor
    /// on, up to [`PROBES`] slots are tried: a free one is taken; one whose
    /// query is still in flight is taken only if `evictable(backend tag,
    /// sent_ns)` says it is presumed lost (it is given up: evicted); others
    /// are skipped. Under overload the region stays full of queries that will
    /// be answered, and new ones are refused ([`InsertError::Busy`]) instead
    /// of pushing those out for nothing.
    pub fn insert(
        &self,
        alloc: &mut Allocator,
        entry: &Entry,
        evictable: impl Fn(u16, u64) -> bool,
        mut draw: impl FnMut() -> u32,
    ) -> Result<Inserted, InsertError> {
        // The first key's index cell is fetched while a slot is chosen.
        let first = draw();
        SharedRegion::prefetch(self.cell(first));
        let mut chosen = None;
        for _ in 0..PROBES.min(self.per_queue) {
            let index = alloc.next;
            let words = self.slot(alloc.queue, index).ok_or(InsertError::NoRegion)?;
            alloc.next = (alloc.next + 1) & (self.per_queue - 1);
            let state = words[0].load(Ordering::Acquire);
            if state & 0xff != IN_USE {
                chosen = Some((index, words, state, None));
                break;
            }
            let backend = words[3].load(Ordering::Relaxed) as u16;
            if !evictable(backend, words[2].load(Ordering::Relaxed)) {
                continue;
            }
            // Only the owner turns a slot IN_USE; others only free it,
            // keeping the generation. After this the slot is free at
            // `state`'s generation, whoever freed it.
            let freed = (state & !0xff) | FREE;
            let evicted = words[0]
                .compare_exchange(state, freed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                .then_some(backend);
            chosen = Some((index, words, freed, evicted));
            break;
        }
        let (index, words, state, evicted) = chosen.ok_or(InsertError::Busy)?;
        let gslot = u64::from(alloc.queue) * u64::from(self.per_queue) + u64::from(index);
        let freed = (state & !0xff) | FREE;
        // The previous query's cell goes, whoever freed the slot.
        if state >> 32 != 0 {
            self.clear_cell(words, gslot, state >> 32);
        }
        let generation = (freed >> 32).wrapping_add(1) & 0xffff_ffff;
        let key = std::iter::once(first)
            .chain((1..KEY_DRAWS).map(|_| draw()))
            .find(|k| {
                self.cell(*k)
                    .compare_exchange(
                        0,
                        Self::cell_value(*k, gslot, generation),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            })
            .ok_or(InsertError::NoCell)?;
        write_entry(words, entry, key);
        // Publishes the entry: its words happen-before any claimer's read.
        words[0].store((generation << 32) | IN_USE, Ordering::Release);
        self.prefetch_ahead(alloc);
        Ok(Inserted {
            key,
            index,
            evicted,
        })
    }

    /// Fetches the index cell of `key` ahead of an insert that will draw it.
    pub fn prefetch_key(&self, key: u32) {
        SharedRegion::prefetch(self.cell(key));
    }

    /// Brings in what the next inserts touch first, which the cursor makes
    /// known now: the slot after next (its state, the key word and the
    /// question's start), and the index cell of the previous query in the
    /// next slot (whose key word the last insert brought in), which that
    /// insert clears. Hints only: a key word another process scribbled on
    /// picks another cell to fetch, nothing more.
    fn prefetch_ahead(&self, alloc: &Allocator) {
        let mask = self.per_queue - 1;
        if let Some(w) = self.slot(alloc.queue, (alloc.next + 1) & mask) {
            for at in [0, 8, SLOT_HEADER_WORDS] {
                SharedRegion::prefetch(&w[at]);
            }
        }
        if let Some(w) = self.slot(alloc.queue, alloc.next) {
            SharedRegion::prefetch(self.cell(w[10].load(Ordering::Relaxed) as u32));
        }
    }

    /// Claims the slot of the query sent with `key` to `backend`, freeing
    /// it, if `check` accepts the entry. Exactly one claimer succeeds.
    pub fn claim_if(
        &self,
        key: u32,
        backend: u16,
        check: impl FnOnce(&Entry) -> bool,
    ) -> Result<Claimed, ClaimError> {
        let cell = self.cell(key);
        let v = cell.load(Ordering::Acquire);
        if v & CELL_VALID == 0 || v as u32 != key {
            return Err(ClaimError::Unknown);
        }
        if v & CELL_CLAIMED != 0 {
            return Err(ClaimError::Taken);
        }
        let gslot = (v >> SLOT_SHIFT) & SLOT_MASK;
        let tag = (v >> TAG_SHIFT) & ((1 << TAG_BITS) - 1);
        let per_queue = u64::from(self.per_queue);
        let (owner, index) = ((gslot / per_queue) as u32, (gslot % per_queue) as u32);
        let words = self.slot(owner, index).ok_or(ClaimError::Unknown)?;
        let state = words[0].load(Ordering::Acquire);
        if state & 0xff != IN_USE {
            return Err(ClaimError::Taken);
        }
        if (state >> 32) & ((1 << TAG_BITS) - 1) != tag
            || words[10].load(Ordering::Relaxed) as u32 != key
        {
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
            .map_err(|_| ClaimError::Taken)?;
        let _ = cell.compare_exchange(v, v | CELL_CLAIMED, Ordering::AcqRel, Ordering::Relaxed);
        Ok(Claimed {
            entry,
            owner,
            index,
        })
    }

    /// Claims the slot of `key` (tests).
    pub fn claim(&self, key: u32, backend: u16) -> Result<Claimed, ClaimError> {
        self.claim_if(key, backend, |_| true)
    }

    /// Walks the owner's region: frees the slots whose deadline passed and
    /// reports them, and reports every free slot (so the owner learns which
    /// of its queries were answered on other queues).
    pub fn sweep(&self, queue: u32, now_ms: u64, mut f: impl FnMut(u32, Swept<'_>)) {
        for index in 0..self.per_queue {
            if !self.sweep_slot(queue, index, now_ms, &mut f) {
                break;
            }
        }
    }

    /// As [`Table::sweep`], over the slots `indices` of the region only
    /// (those the owner has queries in: a slot touches a cache line, and a
    /// region is hundreds of KiB). Indices past the region are skipped.
    pub fn sweep_slots(
        &self,
        queue: u32,
        now_ms: u64,
        indices: &[u32],
        mut f: impl FnMut(u32, Swept<'_>),
    ) {
        for &index in indices {
            self.sweep_slot(queue, index, now_ms, &mut f);
        }
    }

    /// One slot of a sweep; false if there is no such slot.
    fn sweep_slot(
        &self,
        queue: u32,
        index: u32,
        now_ms: u64,
        f: &mut impl FnMut(u32, Swept<'_>),
    ) -> bool {
        let Some(words) = self.slot(queue, index) else {
            return false;
        };
        let state = words[0].load(Ordering::Acquire);
        if state & 0xff != IN_USE {
            f(index, Swept::Free);
            return true;
        }
        if words[1].load(Ordering::Relaxed) > now_ms {
            return true;
        }
        let entry = read_entry(words);
        let freed = (state & !0xff) | FREE;
        if words[0]
            .compare_exchange(state, freed, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let gslot = u64::from(queue) * u64::from(self.per_queue) + u64::from(index);
            self.clear_cell(words, gslot, state >> 32);
            f(index, Swept::Expired(&entry));
        } else {
            f(index, Swept::Free);
        }
        true
    }

    /// Test builds: what a hostile sibling can do. Rewrites, in place, each
    /// in-flight entry of `region` that `f` changes (true); returns how many.
    #[cfg(feature = "test-hooks")]
    pub fn scribble(&self, region: u32, mut f: impl FnMut(u32, &mut Entry) -> bool) -> u32 {
        let mut n = 0;
        for index in 0..self.per_queue {
            let Some(words) = self.slot(region, index) else {
                break;
            };
            if words[0].load(Ordering::Acquire) & 0xff != IN_USE {
                continue;
            }
            let mut e = read_entry(words);
            if f(index, &mut e) {
                write_entry(words, &e, words[10].load(Ordering::Relaxed) as u32);
                n += 1;
            }
        }
        n
    }

    /// Test builds: fills up to `max` free slots of `region` with `entry`
    /// marked in flight (no index cell: only a sweep finds them).
    #[cfg(feature = "test-hooks")]
    pub fn plant(&self, region: u32, entry: &Entry, max: u32) -> u32 {
        let mut n = 0;
        for index in 0..self.per_queue {
            if n == max {
                break;
            }
            let Some(words) = self.slot(region, index) else {
                break;
            };
            let state = words[0].load(Ordering::Acquire);
            if state & 0xff == IN_USE {
                continue;
            }
            write_entry(words, entry, 0);
            let next = (state >> 32).wrapping_add(1) & 0xffff_ffff;
            words[0].store((next << 32) | IN_USE, Ordering::Release);
            n += 1;
        }
        n
    }

    /// The number of regions (queues).
    pub fn regions(&self) -> u32 {
        self.regions
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

fn write_entry(w: &[AtomicU64], e: &Entry, key: u32) {
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
    put(10, u64::from(key));
    put(11, e.cache.map_or(0, |v| (1 << 32) | u64::from(v)));
    let q = e.question();
    for (i, chunk) in q.chunks(8).enumerate() {
        put(SLOT_HEADER_WORDS + i, pack(chunk));
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
        let bytes = get(SLOT_HEADER_WORDS + i).to_le_bytes();
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
        cache: {
            let w = get(11);
            (w >> 32 == 1).then_some(w as u32)
        },
    }
}

#[cfg(test)]
mod tests;
