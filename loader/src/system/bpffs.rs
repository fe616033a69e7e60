//! The BPF filesystem that holds the instance's pins.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

/// The conventional bpffs mount point, mounted on demand.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(
        "xdp.pin_root {0:?} is not on a BPF filesystem: mount one (`mount -t bpf bpf DIR`) or set pin_root under /sys/fs/bpf"
    )]
    NotBpffs(PathBuf),
    #[error("cannot mount bpffs at {DEFAULT_MOUNT}: {0} (needs CAP_SYS_ADMIN)")]
    Mount(nix::Error),
}

/// The nearest existing ancestor of `path` (itself included).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

/// Whether `path` (or, if it does not exist yet, where it would be created)
/// is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(existing_ancestor(path)).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `pin_root` is on a bpffs, mounting one at /sys/fs/bpf if
/// `pin_root` lies beneath it and nothing is mounted there. Returns whether
/// it mounted.
pub fn ensure(pin_root: &Path) -> Result<bool, BpffsError> {
    if is_bpffs(pin_root) {
        return Ok(false);
    }
    let default = Path::new(DEFAULT_MOUNT);
    if !pin_root.starts_with(default) {
        return Err(BpffsError::NotBpffs(pin_root.into()));
    }
    mount(
        Some("bpf"),
        default,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(BpffsError::Mount)?;
    if is_bpffs(pin_root) {
        Ok(true)
    } else {
        Err(BpffsError::NotBpffs(pin_root.into()))
    }
}
