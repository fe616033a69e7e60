//! Starting one worker process: a dataplane (CAP_NET_RAW, and CAP_IPC_LOCK
//! if configured), a TCP worker or the metrics exporter (no capability).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use caps::Capability;
use tokio::process::{Child, Command};

use super::channel::{Channel, ChannelError};
use super::privdrop::{self, ChildSetup, ExecImage, Identity};
use crate::plan::Plan;
use crate::system::users::Account;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot open the {kind} binary {path}: {source}")]
    Binary {
        kind: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("cannot start the {kind}: {source}")]
    Start {
        kind: &'static str,
        source: std::io::Error,
    },
}

/// What every worker of one kind is started from.
pub struct Template {
    /// "dataplane", "TCP worker", "metrics exporter": for messages.
    kind: &'static str,
    binary: PathBuf,
    identity: Identity,
    image: Arc<ExecImage>,
}

impl Template {
    /// Dataplanes: `dataplane.user`, CAP_NET_RAW (+ CAP_IPC_LOCK).
    pub fn dataplane(plan: &Plan) -> Result<Template, SpawnError> {
        let mut keep = vec![Capability::CAP_NET_RAW];
        if plan.fixed.dataplane.keep_ipc_lock {
            keep.push(Capability::CAP_IPC_LOCK);
        }
        Template::new(
            "dataplane",
            &plan.dataplane_binary,
            "xdpdns-dataplane",
            &plan.account,
            keep,
        )
    }

    /// TCP workers: `tcp.user`, no capability.
    pub fn tcp(plan: &Plan) -> Result<Template, SpawnError> {
        Template::new(
            "TCP worker",
            &plan.tcp_binary,
            "xdpdns-tcp",
            &plan.tcp_account,
            Vec::new(),
        )
    }

    /// The metrics exporter: `tcp.user` too, no capability.
    pub fn metrics(plan: &Plan) -> Result<Template, SpawnError> {
        Template::new(
            "metrics exporter",
            &plan.metrics_binary,
            "xdpdns-metrics",
            &plan.tcp_account,
            Vec::new(),
        )
    }

    fn new(
        kind: &'static str,
        binary: &Path,
        argv0: &str,
        account: &Account,
        keep: Vec<Capability>,
    ) -> Result<Template, SpawnError> {
        // A worker sees only what it needs from our environment.
        let env: Vec<(String, String)> = ["RUST_LOG", "JOURNAL_STREAM", "NO_COLOR"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        let image =
            ExecImage::new(binary, &[argv0], &env).map_err(|source| SpawnError::Binary {
                kind,
                path: binary.display().to_string(),
                source,
            })?;
        Ok(Template {
            kind,
            binary: binary.to_path_buf(),
            identity: Identity {
                uid: account.uid,
                gid: account.gid,
                keep,
            },
            image: Arc::new(image),
        })
    }

    pub fn uid(&self) -> u32 {
        self.identity.uid
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// A started worker and our end of its control socket.
pub struct Spawned {
    pub child: Child,
    pub channel: Channel,
    pub pid: u32,
}

/// Forks and execs one worker. Must be called from the runtime's main
/// thread: the parent-death signal follows the thread that forks.
pub fn spawn(t: &Template, cpu: Option<u32>) -> Result<Spawned, SpawnError> {
    let cpus = cpu.map(crate::system::cpus::mask);
    let (channel, theirs) = Channel::pair()?;
    let identity = t.identity.clone();
    let image = t.image.clone();
    let parent_pid = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(&t.binary);
    cmd.stdin(Stdio::null()).kill_on_drop(true).env_clear();
    // SAFETY: `become_worker` is async-signal-safe: it only makes system
    // calls on data prepared before the fork (identity, image, socket).
    unsafe {
        cmd.pre_exec(move || {
            privdrop::become_worker(&ChildSetup {
                identity: &identity,
                image: &image,
                control: &theirs,
                parent_pid,
                cpus: cpus.as_ref(),
            })
        });
    }
    let child = cmd.spawn().map_err(|source| SpawnError::Start {
        kind: t.kind,
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    Ok(Spawned {
        child,
        channel,
        pid,
    })
}
