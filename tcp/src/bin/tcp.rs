//! `xdpdns-tcp`: serves DNS over TCP for xdpdns. Started by the `xdpdns`
//! loader as its own unprivileged user with no capabilities and
//! no-new-privs; its control socket is fd 3, the listeners come with Init.

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use tracing::{error, info};
use xdpdns_common::ipc::workers::{ToTcp, WORKER_PROTOCOL_VERSION};
use xdpdns_tcp::channel::Channel;
use xdpdns_tcp::server::{self, Exit, Shared};
use xdpdns_tcp::{sandbox, startup};

fn main() -> ExitCode {
    if let Some(code) = startup::handle_args("xdpdns-tcp", "serves DNS over TCP") {
        return code;
    }
    xdpdns_common::logging::init("info");
    let outcome = match startup::block_on_local(run()) {
        Ok(outcome) => outcome,
        Err(code) => return code,
    };
    match outcome {
        Ok(Exit::Shutdown) => ExitCode::SUCCESS,
        Ok(Exit::LoaderGone) => {
            info!("the loader went away: exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<Exit> {
    startup::check_unprivileged().context("privileges")?;
    let channel = Channel::from_inherited()?;
    let (msg, fds) = tokio::time::timeout(Duration::from_secs(10), channel.recv::<ToTcp>())
        .await
        .context("no configuration from the loader within 10 s")??;
    let ToTcp::Init(init) = msg else {
        bail!("the loader's first message is not Init");
    };
    if init.protocol != WORKER_PROTOCOL_VERSION {
        bail!(
            "protocol mismatch: loader speaks version {}, this worker {WORKER_PROTOCOL_VERSION}; install matching binaries",
            init.protocol
        );
    }
    let fds = channel
        .rest_of::<ToTcp>(fds, init.config.descriptors, |m| {
            matches!(m, ToTcp::MoreFds)
        })
        .await?;
    let mut fds = fds;
    // The packet cache's memfd follows the listeners when there is one.
    let cache_spec = init.config.forward.as_ref().and_then(|f| f.cache);
    let cache = match cache_spec {
        Some(spec) if fds.len() == init.config.listen.len() + 1 => {
            let fd = fds.pop().context("the packet cache")?;
            let cache = xdpdns_dataplane::shm::cache::Cache::open(fd.as_fd(), spec.slots, spec.key)
                .context("mapping the packet cache")?;
            Some(std::sync::Arc::new(cache))
        }
        _ => None,
    };
    if fds.len() != init.config.listen.len() || !fds.iter().all(server::is_listener) {
        bail!("the loader must send one TCP listener per listen address");
    }
    xdpdns_dataplane::privileges::set_name(&format!("xdpdns-tcp-{}", init.worker));
    let _span = tracing::info_span!("tcp", worker = init.worker).entered();
    let shared = Shared::new(&init.config)?;
    shared.pipeline.borrow_mut().set_cache(cache);
    #[cfg(feature = "test-hooks")]
    sandbox::arm_forbidden_call_on_sigusr2()?;
    xdpdns_dataplane::sandbox::apply(&sandbox::tcp_filter()?).context("seccomp")?;
    let every = Duration::from_millis(u64::from(init.stats_interval_ms.max(100)));
    Ok(server::run(channel, shared, fds, &init.config, every).await?)
}
