//! Starting one worker process: a dataplane (CAP_NET_RAW, and CAP_IPC_LOCK
//! if configured), a TCP worker or the metrics exporter (no capability),
//! each in a PID namespace of its own, with the resource limits its kind
//! needs.

use std::path::Path;
use std::sync::Arc;

use caps::Capability;

use super::channel::{Channel, ChannelError};
use super::privdrop::{self, ChildSetup, ExecImage, Identity};
use super::process::{self, WorkerProcess};
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
    identity: Identity,
    image: Arc<ExecImage>,
    /// Resource limits set in the child before exec.
    limits: Vec<(libc::__rlimit_resource_t, u64)>,
}

/// Limits every worker gets: no core dumps (their memory holds queries and
/// keys), no file growth when stderr is not a file (they write no file).
fn base_limits() -> Vec<(libc::__rlimit_resource_t, u64)> {
    let mut v = vec![(libc::RLIMIT_CORE, 0)];
    let stderr_is_file = nix::sys::stat::fstat(std::io::stderr())
        .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFREG)
        .unwrap_or(false);
    if !stderr_is_file {
        v.push((libc::RLIMIT_FSIZE, 0));
    }
    v
}

impl Template {
    /// Dataplanes: `dataplane.user`, CAP_NET_RAW (+ CAP_IPC_LOCK).
    pub fn dataplane(plan: &Plan) -> Result<Template, SpawnError> {
        let mut keep = vec![Capability::CAP_NET_RAW];
        if plan.fixed.dataplane.keep_ipc_lock {
            keep.push(Capability::CAP_IPC_LOCK);
        }
        let mut limits = base_limits();
        // Its descriptors: at most what the loader may hand it (kernel-path
        // sockets, forwarding's pools and table: MAX_DESCRIPTORS, which
        // validation holds every configuration to), plus the AF_XDP socket,
        // epoll, the control socket and stdio.
        limits.push((
            libc::RLIMIT_NOFILE,
            64 + u64::from(xdpdns_common::ipc::MAX_DESCRIPTORS),
        ));
        if !plan.fixed.dataplane.keep_ipc_lock {
            // UMEM is charged to the user: every queue's together, plus as
            // much again for replacements (a dead dataplane's UMEM is released
            // a moment after it dies, and every queue may die at once).
            // Never above the limit we have; a replacement that still finds
            // no room fails setup and is retried with backoff.
            let want = 2 * plan.umem_total;
            let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
                .map(|(_, h)| h)
                .unwrap_or(libc::RLIM_INFINITY);
            limits.push((libc::RLIMIT_MEMLOCK, want.min(hard)));
        }
        Template::new(
            "dataplane",
            &plan.dataplane_binary,
            "xdpdns-dataplane",
            &plan.account,
            keep,
            limits,
        )
    }

    /// TCP workers: `tcp.user`, no capability.
    pub fn tcp(plan: &Plan) -> Result<Template, SpawnError> {
        let mut limits = base_limits();
        limits.push((libc::RLIMIT_MEMLOCK, 0));
        Template::new(
            "TCP worker",
            &plan.tcp_binary,
            "xdpdns-tcp",
            &plan.tcp_account,
            Vec::new(),
            limits,
        )
    }

    /// The metrics exporter: `tcp.user` too, no capability.
    pub fn metrics(plan: &Plan) -> Result<Template, SpawnError> {
        let mut limits = base_limits();
        limits.push((libc::RLIMIT_MEMLOCK, 0));
        limits.push((libc::RLIMIT_NOFILE, 256));
        Template::new(
            "metrics exporter",
            &plan.metrics_binary,
            "xdpdns-metrics",
            &plan.tcp_account,
            Vec::new(),
            limits,
        )
    }

    fn new(
        kind: &'static str,
        binary: &Path,
        argv0: &str,
        account: &Account,
        keep: Vec<Capability>,
        limits: Vec<(libc::__rlimit_resource_t, u64)>,
    ) -> Result<Template, SpawnError> {
        // A worker sees only what it needs from our environment (the test
        // hook is read by test builds of the workers only).
        let env: Vec<(String, String)> =
            ["RUST_LOG", "JOURNAL_STREAM", "NO_COLOR", "XDPDNS_TEST_HOOK"]
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
            limits,
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
    pub child: WorkerProcess,
    pub channel: Channel,
    pub pid: u32,
}

/// Forks and execs one worker. Must be called from the runtime's main
/// thread: the parent-death signal follows the thread that forks.
pub fn spawn(t: &Template, cpu: Option<u32>) -> Result<Spawned, SpawnError> {
    let cpus = cpu.map(crate::system::cpus::mask);
    let (channel, theirs) = Channel::pair()?;
    let setup = ChildSetup {
        identity: &t.identity,
        image: &t.image,
        control: &theirs,
        cpus: cpus.as_ref(),
        limits: &t.limits,
    };
    // SAFETY: `become_worker` is async-signal-safe: it only makes system
    // calls on data prepared before the fork (identity, image, socket,
    // limits), and execs or returns the error.
    let child =
        unsafe { process::spawn(|| privdrop::become_worker(&setup)) }.map_err(|source| {
            SpawnError::Start {
                kind: t.kind,
                source,
            }
        })?;
    drop(theirs);
    let pid = child.id();
    Ok(Spawned {
        child,
        channel,
        pid,
    })
}
