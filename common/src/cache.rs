//! Geometry of the packet cache shared by every dataplane of an instance (a
//! sealed memfd the loader creates when `[cache] entries` is set): a header
//! of [`HEADER_WORDS`] words, then `slots` entries of [`SLOT_WORDS`] words
//! in buckets of [`WAYS`]. The dataplane owns the access code.

/// Entries per bucket: a key may live in any of its bucket's ways.
pub const WAYS: usize = 4;
/// 64-bit words per entry (1 KiB).
pub const SLOT_WORDS: usize = 128;
/// Words of an entry before its response.
pub const ENTRY_HEADER_WORDS: usize = 6;
/// Largest response an entry holds; larger ones are not cached.
pub const MAX_RESPONSE: usize = (SLOT_WORDS - ENTRY_HEADER_WORDS) * 8;
/// Words of the region header (word 0: the purge epoch).
pub const HEADER_WORDS: usize = 8;

/// Bytes of the shared region for `slots` entries (a power of two).
pub fn table_bytes(slots: u32) -> u64 {
    (HEADER_WORDS as u64 + u64::from(slots) * SLOT_WORDS as u64) * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        assert_eq!(MAX_RESPONSE, 976);
        assert_eq!(table_bytes(1024), 64 + 1024 * 1024);
    }
}
