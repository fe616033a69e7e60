//! RLIMIT_MEMLOCK: UMEM registration is charged to the dataplane user's
//! locked memory (all its processes together) unless CAP_IPC_LOCK is kept.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The soft and hard limits in bytes; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemlockLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

pub fn current() -> nix::Result<MemlockLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)?;
    let conv = |v: u64| (v != libc::RLIM_INFINITY).then_some(v);
    Ok(MemlockLimit {
        soft: conv(soft),
        hard: conv(hard),
    })
}

/// Raises the soft limit to the hard one (children inherit it). Makes no
/// system call when they are equal, e.g. under systemd's LimitMEMLOCK=infinity
/// with setrlimit filtered out.
pub fn raise_soft_to_hard() -> nix::Result<MemlockLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)?;
    if soft != hard {
        setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard)?;
    }
    current()
}

/// Human-readable byte count: "8 MiB", "1.5 GiB", "512 B".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The budget check: `None` if `need` bytes fit under `limit`, otherwise the
/// message that says what to change.
pub fn shortfall(need: u64, queues: usize, limit: Option<u64>, user: &str) -> Option<String> {
    let limit = limit?;
    (need > limit).then(|| {
        format!(
            "UMEM needs {} for {queues} queue(s) but RLIMIT_MEMLOCK is {} (charged to user {user:?}, \
             all its processes together): set LimitMEMLOCK=infinity (or `ulimit -l`), lower xsk.frames, \
             or set dataplane.keep_ipc_lock = true",
            human(need),
            human(limit)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(8 << 20), "8 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }

    #[test]
    fn shortfall_message_names_the_fixes() {
        assert_eq!(shortfall(4 << 20, 2, Some(8 << 20), "nobody"), None);
        assert_eq!(shortfall(u64::MAX, 2, None, "nobody"), None);
        let m = shortfall(32 << 20, 2, Some(8 << 20), "nobody").unwrap();
        assert!(
            m.starts_with("UMEM needs 32 MiB for 2 queue(s) but RLIMIT_MEMLOCK is 8 MiB"),
            "{m}"
        );
        for fix in [
            "LimitMEMLOCK=infinity",
            "xsk.frames",
            "dataplane.keep_ipc_lock",
        ] {
            assert!(m.contains(fix), "{m}");
        }
    }
}
