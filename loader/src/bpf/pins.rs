//! The instance's pin directory: `<pin_root>/<instance>/`, root-only (0700),
//! so no dataplane uid can open a pinned map.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File names inside the pin directory.
pub const LINK: &str = "link";
pub const PROG: &str = "prog";

#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn new(dir: &Path) -> Self {
        Pins { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// Creates the directory (and its parents) with mode 0700.
    pub fn create(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
    }

    /// Removes one pin if present.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes every pin and the directory itself.
    pub fn remove_all(&self) -> io::Result<()> {
        match fs::read_dir(&self.dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    fs::remove_file(e.path())?;
                }
                fs::remove_dir(&self.dir)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}
