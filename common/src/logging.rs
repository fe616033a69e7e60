//! One log format for every xdpdns process: structured `tracing` events on
//! stderr. Under systemd (JOURNAL_STREAM set) timestamps and colours are left
//! to the journal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `RUST_LOG` overrides `default_level`.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    if journal {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.with_ansi(ansi).init();
    }
}
