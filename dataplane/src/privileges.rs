//! What the dataplane checks about its own privileges at start.

use caps::{CapSet, Capability};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("refusing to run as root: the loader starts dataplanes as dataplane.user")]
    Root,
    #[error("capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error(
        "unexpected capabilities {0:?}: the loader grants CAP_NET_RAW (and CAP_IPC_LOCK if configured) only"
    )]
    TooMany(Vec<Capability>),
}

/// Refuses root, refuses any capability beyond CAP_NET_RAW and CAP_IPC_LOCK,
/// and clears the ambient and inheritable sets so nothing is passed on.
pub fn check_and_trim() -> Result<(), PrivilegeError> {
    if nix::unistd::getuid().is_root() || nix::unistd::geteuid().is_root() {
        return Err(PrivilegeError::Root);
    }
    let permitted = caps::read(None, CapSet::Permitted)?;
    let extra: Vec<_> = permitted
        .into_iter()
        .filter(|c| !matches!(c, Capability::CAP_NET_RAW | Capability::CAP_IPC_LOCK))
        .collect();
    if !extra.is_empty() {
        return Err(PrivilegeError::TooMany(extra));
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    Ok(())
}

/// Names the process (what `ps` and `top` show), e.g. "xdpdns-dp-q0".
pub fn set_name(name: &str) {
    if let Ok(c) = std::ffi::CString::new(name) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15
        // bytes by the kernel) from a live CString.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
    }
}

/// What a worker does to itself once started: not dumpable (no core file,
/// no ptrace by its own user, /proc/PID owned by root), and no process of
/// its own (RLIMIT_NPROC 0: it never forks).
pub fn lock_down() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads one rlimit from a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &zero) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability for good (the AF_XDP socket is bound; nothing
/// later needs CAP_NET_RAW or CAP_IPC_LOCK).
pub fn drop_all() -> Result<(), PrivilegeError> {
    caps::clear(None, CapSet::Effective)?;
    caps::clear(None, CapSet::Permitted)?;
    Ok(())
}
