//! What every worker of this crate checks and sets up before serving: it
//! is not root and holds no capability at all (the loader started it with
//! an empty bounding set and no-new-privs), and nothing it execs could
//! gain one.

use caps::CapSet;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("refusing to run as root: the loader starts workers as their own user")]
    Root,
    #[error("capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("unexpected capabilities {0:?}: workers run with none")]
    Capabilities(Vec<caps::Capability>),
    #[error("no-new-privs is not set: workers are started by the xdpdns loader")]
    NoNewPrivs,
    #[error("cannot lock the process down: {0}")]
    LockDown(std::io::Error),
}

/// Refuses root, any capability, and a missing no-new-privs; clears the
/// ambient and inheritable sets.
pub fn check_unprivileged() -> Result<(), StartupError> {
    if nix::unistd::getuid().is_root() || nix::unistd::geteuid().is_root() {
        return Err(StartupError::Root);
    }
    let permitted = caps::read(None, CapSet::Permitted)?;
    if !permitted.is_empty() {
        return Err(StartupError::Capabilities(permitted.into_iter().collect()));
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointers.
    if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
        return Err(StartupError::NoNewPrivs);
    }
    xdpdns_dataplane::privileges::lock_down().map_err(StartupError::LockDown)?;
    Ok(())
}

/// `--version`, or the one-line explanation for anyone starting the binary
/// by hand; `None` when started properly (no arguments).
pub fn handle_args(name: &str, what: &str) -> Option<std::process::ExitCode> {
    let arg = std::env::args().nth(1)?;
    if arg == "--version" || arg == "-V" {
        println!("{name} {}", env!("CARGO_PKG_VERSION"));
        return Some(std::process::ExitCode::SUCCESS);
    }
    eprintln!(
        "{name} {what} for xdpdns. It is started by `xdpdns run`, which passes its control \
         socket as fd 3; it takes no arguments."
    );
    Some(std::process::ExitCode::from(2))
}

/// Runs `fut` to completion on a current-thread runtime inside a
/// `LocalSet` (what both worker binaries serve on). A runtime that cannot
/// start is logged and exit status 2.
pub fn block_on_local<F: std::future::Future>(fut: F) -> Result<F::Output, std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| {
            tracing::error!("cannot start the runtime: {e}");
            std::process::ExitCode::from(2)
        })?;
    Ok(tokio::task::LocalSet::new().block_on(&rt, fut))
}
