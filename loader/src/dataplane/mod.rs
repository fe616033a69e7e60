//! Dataplane processes: started with reduced privileges (`privdrop`), spoken
//! to over a socketpair (`channel`), watched and restarted (`supervisor`).

pub mod backoff;
pub mod channel;
pub mod privdrop;
pub mod spawn;
pub mod supervisor;
