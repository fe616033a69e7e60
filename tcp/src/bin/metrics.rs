//! `xdpdns-metrics`: serves xdpdns' Prometheus endpoint. Started by the
//! `xdpdns` loader as an unprivileged user with no capabilities and
//! no-new-privs; its control socket is fd 3, its listener comes with Init.

use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use tracing::error;
use xdpdns_common::ipc::workers::{ToMetrics, WORKER_PROTOCOL_VERSION};
use xdpdns_tcp::channel::Channel;
use xdpdns_tcp::exporter::{self, Exporter};
use xdpdns_tcp::{sandbox, server, startup};

fn main() -> ExitCode {
    if let Some(code) = startup::handle_args("xdpdns-metrics", "serves the Prometheus endpoint") {
        return code;
    }
    xdpdns_common::logging::init("info");
    let outcome = match startup::block_on_local(run()) {
        Ok(outcome) => outcome,
        Err(code) => return code,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    startup::check_unprivileged().context("privileges")?;
    let channel = Channel::from_inherited()?;
    let (msg, fds) = tokio::time::timeout(Duration::from_secs(10), channel.recv::<ToMetrics>())
        .await
        .context("no configuration from the loader within 10 s")??;
    let ToMetrics::Init {
        protocol,
        max_connections,
        allow,
        ..
    } = msg
    else {
        bail!("the loader's first message is not Init");
    };
    if protocol != WORKER_PROTOCOL_VERSION {
        bail!(
            "protocol mismatch: loader speaks version {protocol}, this worker {WORKER_PROTOCOL_VERSION}"
        );
    }
    let [fd] = <[OwnedFd; 1]>::try_from(fds)
        .map_err(|_| anyhow::anyhow!("the loader must send one listener"))?;
    if !server::is_listener(&fd) {
        bail!("the loader must send a TCP listener");
    }
    xdpdns_dataplane::privileges::set_name("xdpdns-metrics");
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std)?;
    #[cfg(feature = "test-hooks")]
    sandbox::arm_forbidden_call_on_sigusr2()?;
    xdpdns_dataplane::sandbox::apply(&sandbox::metrics_filter()?).context("seccomp")?;
    let allow = xdpdns_common::net::PrefixSet::new(&allow);
    Ok(exporter::run(
        channel,
        Rc::new(Exporter::default()),
        listener,
        max_connections,
        allow,
    )
    .await?)
}
