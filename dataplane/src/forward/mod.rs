//! Forwarding to backends: the shared in-flight table and pool selection.

pub mod pool;
pub mod table;
