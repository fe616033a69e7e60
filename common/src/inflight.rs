//! Geometry of the in-flight table shared by all dataplanes of an instance
//! (a memfd the loader creates): one region of `max_in_flight` slots per
//! queue, each slot `SLOT_WORDS` 64-bit words, then an index of
//! [`index_cells`] words that finds a slot from the (port, DNS ID) a reply
//! arrives with. The dataplane owns the access code.

/// 64-bit words per slot (384 bytes).
pub const SLOT_WORDS: usize = 48;
/// Longest question a slot keeps (for answers made without the backend).
pub const MAX_QUESTION: usize = 259;
/// Header words of a slot, before the question.
pub const SLOT_HEADER_WORDS: usize = 12;
/// Slots the index can name (22 bits of slot number).
pub const MAX_SLOTS: u64 = 1 << 22;

/// Cells of the index: at least four per slot (so a random key finds a free
/// cell almost always at the first draw), a power of two.
pub fn index_cells(regions: u32, per_queue: u32) -> u64 {
    (4 * u64::from(regions) * u64::from(per_queue))
        .next_power_of_two()
        .max(1024)
}

/// Bytes of the table for `regions` queue ids (the device's queue count)
/// and `per_queue` slots each.
pub fn table_bytes(regions: u32, per_queue: u32) -> u64 {
    let slots = u64::from(regions) * u64::from(per_queue) * (SLOT_WORDS as u64);
    (slots + index_cells(regions, per_queue)) * 8
}

const _: () = assert!(SLOT_HEADER_WORDS * 8 + MAX_QUESTION <= SLOT_WORDS * 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_size() {
        assert_eq!(index_cells(2, 4096), 32768);
        assert_eq!(super::table_bytes(2, 4096), 2 * 4096 * 384 + 32768 * 8);
        assert_eq!(index_cells(1, 64), 1024);
    }
}
