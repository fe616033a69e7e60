//! Reading the configuration file, as a privileged process must read a
//! file: only a regular file, of bounded size, that nobody but its owner
//! can write; and errors that say where, never what the file holds.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use xdpdns_common::config::{Config, MAX_NAME_FILE_BYTES};

/// Largest configuration read.
pub const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error(
        "{path} is writable by its group or by everyone (mode {mode:o}): `chmod go-w` it; a privileged process reads it"
    )]
    Writable { path: String, mode: u32 },
    #[error("{path} is not UTF-8 text")]
    NotText { path: String },
    #[error("{path} is not valid: {source}")]
    Invalid {
        path: String,
        source: xdpdns_common::config::ConfigError,
    },
}

/// The text of `path`, checked as described above.
pub fn read(path: &Path) -> Result<String, ConfigFileError> {
    read_bounded(path, MAX_BYTES)
}

/// The text of `path`, checked as described above, of at most `max` bytes
/// (a rule's `qname_file` may be larger than a configuration).
pub fn read_bounded(path: &Path, max: u64) -> Result<String, ConfigFileError> {
    let name = || path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO or device must not block the loader.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| ConfigFileError::Open {
            path: name(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| ConfigFileError::Open {
        path: name(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(ConfigFileError::NotRegular { path: name() });
    }
    if meta.len() > max {
        return Err(ConfigFileError::TooLarge { path: name(), max });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(ConfigFileError::Writable {
            path: name(),
            mode: meta.mode() & 0o7777,
        });
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ConfigFileError::Open {
            path: name(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(ConfigFileError::TooLarge { path: name(), max });
    }
    String::from_utf8(bytes).map_err(|_| ConfigFileError::NotText { path: name() })
}

/// Reads and validates `path`, and the name files its rules name (each
/// read as the configuration is, up to [`MAX_NAME_FILE_BYTES`]).
pub fn load(path: &Path) -> Result<Config, ConfigFileError> {
    let text = read(path)?;
    let names = |p: &Path| read_bounded(p, MAX_NAME_FILE_BYTES).map_err(|e| e.to_string());
    Config::from_toml_with(&text, &names).map_err(|source| ConfigFileError::Invalid {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("xdpdns-cfgfile-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn only_a_private_regular_text_file_of_bounded_size_is_read() {
        let d = dir();
        let ok = d.join("ok.toml");
        std::fs::write(
            &ok,
            "[xdp]\ninterface = \"eth0\"\n[[listen]]\naddress = \"192.0.2.1:53\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load(&ok).is_ok());

        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(read(&ok), Err(ConfigFileError::Writable { .. })));

        assert!(matches!(read(&d), Err(ConfigFileError::NotRegular { .. })));
        assert!(matches!(
            read(Path::new("/dev/zero")),
            Err(ConfigFileError::NotRegular { .. })
        ));
        let fifo = d.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            matches!(read(&fifo), Err(ConfigFileError::NotRegular { .. })),
            "a FIFO neither blocks nor is read"
        );

        let big = d.join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_BYTES as usize + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(read(&big), Err(ConfigFileError::TooLarge { .. })));

        let secret = d.join("secret.toml");
        std::fs::write(&secret, "root:$6$hash:19000:0:99999:7:::\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load(&secret).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(
            !e.contains("$6$") && !e.contains("root:"),
            "no content in errors: {e}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
