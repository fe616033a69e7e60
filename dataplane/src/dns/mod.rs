//! DNS messages: the query parser and the answer writer. Both work on the
//! message bytes in place and never allocate.

mod answer;
pub mod cacheable;
mod query;
mod ttl;

#[doc(hidden)]
pub mod testing;

pub use answer::{Extra, Original, records_for, write_answer, write_answer_for, write_answer_with};
pub use query::{Edns, LABEL_TAIL, LabelStarts, Query, parse_query};
pub use ttl::TtlClamp;

pub const HEADER_LEN: usize = 12;
pub const TYPE_OPT: u16 = 41;
pub const OPCODE_QUERY: u8 = 0;
/// Extended RCODE BADVERS (16): upper 8 bits go in the OPT TTL.
pub const BADVERS_EXT: u8 = 1;
