//! Geometry of the in-flight table shared by all dataplanes of an instance
//! (a memfd the loader creates): one region of `max_in_flight` slots per queue,
//! each slot `SLOT_WORDS` 64-bit words. The dataplane owns the access code.

/// 64-bit words per slot (384 bytes).
pub const SLOT_WORDS: usize = 48;
/// Longest question a slot keeps (for SERVFAIL answers on timeout).
pub const MAX_QUESTION: usize = 259;

/// Bytes of the table for `regions` queue ids (the device's queue count)
/// and `per_queue` slots each.
pub fn table_bytes(regions: u32, per_queue: u32) -> u64 {
    u64::from(regions) * u64::from(per_queue) * (SLOT_WORDS as u64) * 8
}

// 10 header words, then the question, must fit a slot.
const _: () = assert!(10 * 8 + MAX_QUESTION <= SLOT_WORDS * 8);

#[cfg(test)]
mod tests {
    #[test]
    fn table_size() {
        assert_eq!(super::table_bytes(2, 4096), 2 * 4096 * 384);
    }
}
