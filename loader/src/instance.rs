//! The instance's runtime directory, its lock, and its control socket path.
//! The lock makes a second `run` of the same instance fail fast instead of
//! fighting over pins.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot create the runtime directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "instance {instance:?} is already running (pid {pid}); stop it first or choose another `instance`"
    )]
    Running { instance: String, pid: String },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
}

pub const CONTROL_SOCKET: &str = "control.sock";
const LOCK_FILE: &str = "lock";

/// Where an instance's control socket is, from its runtime directory.
pub fn control_socket(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(CONTROL_SOCKET)
}

/// Held for the life of `run`; removes the runtime directory on drop.
pub struct Instance {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Instance {
    pub fn acquire(instance: &str, dir: &Path) -> Result<Instance, InstanceError> {
        let dir_err = |source| InstanceError::Dir {
            path: dir.display().to_string(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(dir_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o750)).map_err(dir_err)?;
        let path = dir.join(LOCK_FILE);
        let lock_err = |source| InstanceError::Lock {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::Error::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(InstanceError::Running {
                    instance: instance.into(),
                    pid: pid.trim().to_string(),
                });
            }
            Err((_, e)) => return Err(lock_err(e.into())),
        };
        lock.set_len(0).map_err(lock_err)?;
        lock.rewind().map_err(lock_err)?;
        write!(lock, "{}", std::process::id()).map_err(lock_err)?;
        Ok(Instance {
            dir: dir.into(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.dir.join(CONTROL_SOCKET));
        let _ = fs::remove_file(self.dir.join(LOCK_FILE));
        let _ = fs::remove_dir(&self.dir);
    }
}
