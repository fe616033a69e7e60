//! Starting one dataplane process.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use caps::Capability;
use tokio::process::{Child, Command};

use super::channel::{Channel, ChannelError};
use super::privdrop::{self, ChildSetup, ExecImage, Identity};
use crate::plan::Plan;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot open the dataplane binary {path}: {source}")]
    Binary {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("cannot start the dataplane: {0}")]
    Start(std::io::Error),
}

/// What every dataplane of this instance is started from.
pub struct Template {
    identity: Identity,
    image: Arc<ExecImage>,
}

impl Template {
    pub fn new(plan: &Plan) -> Result<Template, SpawnError> {
        let mut keep = vec![Capability::CAP_NET_RAW];
        if plan.fixed.dataplane.keep_ipc_lock {
            keep.push(Capability::CAP_IPC_LOCK);
        }
        // The dataplane sees only what it needs from our environment.
        let env: Vec<(String, String)> = ["RUST_LOG", "JOURNAL_STREAM", "NO_COLOR"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        let image = ExecImage::new(&plan.dataplane_binary, &["xdpdns-dataplane"], &env).map_err(
            |source| SpawnError::Binary {
                path: plan.dataplane_binary.display().to_string(),
                source,
            },
        )?;
        Ok(Template {
            identity: Identity {
                uid: plan.account.uid,
                gid: plan.account.gid,
                keep,
            },
            image: Arc::new(image),
        })
    }

    pub fn uid(&self) -> u32 {
        self.identity.uid
    }
}

/// A started dataplane and our end of its control socket.
pub struct Spawned {
    pub child: Child,
    pub channel: Channel,
    pub pid: u32,
}

/// Forks and execs one dataplane. Must be called from the runtime's main
/// thread: the parent-death signal follows the thread that forks.
pub fn spawn(t: &Template, binary: &Path, cpu: Option<u32>) -> Result<Spawned, SpawnError> {
    let cpus = cpu.map(crate::system::cpus::mask);
    let (channel, theirs) = Channel::pair()?;
    let identity = t.identity.clone();
    let image = t.image.clone();
    let parent_pid = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(binary);
    cmd.stdin(Stdio::null()).kill_on_drop(true).env_clear();
    // SAFETY: `become_dataplane` is async-signal-safe: it only makes system
    // calls on data prepared before the fork (identity, image, socket).
    unsafe {
        cmd.pre_exec(move || {
            privdrop::become_dataplane(&ChildSetup {
                identity: &identity,
                image: &image,
                control: &theirs,
                parent_pid,
                cpus: cpus.as_ref(),
            })
        });
    }
    let child = cmd.spawn().map_err(SpawnError::Start)?;
    let pid = child.id().unwrap_or(0);
    Ok(Spawned {
        child,
        channel,
        pid,
    })
}
