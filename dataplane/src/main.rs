//! `xdpdns-dataplane`: serves one NIC queue. Started by the `xdpdns` loader
//! with CAP_NET_RAW only, as an unprivileged user, with no-new-privs; its
//! control socket is fd 3.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use tracing::{error, info};
use xdpdns_common::ipc::{PROTOCOL_VERSION, SetupFailure, XskReady};
use xdpdns_dataplane::control::Control;
use xdpdns_dataplane::engine::Engine;
use xdpdns_dataplane::forward::{ForwardFds, Forwarder};
use xdpdns_dataplane::kernel_path::KernelPath;
use xdpdns_dataplane::pipeline::Pipeline;
use xdpdns_dataplane::privileges;
use xdpdns_dataplane::worker::{Exit, Tuning, Worker};
use xdpdns_dataplane::xsk::{Xsk, XskConfig};

/// Exit status when setup failed (the loader backs off before retrying).
const EXIT_SETUP: u8 = 2;

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        match arg.as_str() {
            "--version" | "-V" => {
                println!("xdpdns-dataplane {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!(
                    "xdpdns-dataplane serves one NIC queue for xdpdns. It is started by `xdpdns run`, \
                     which passes its control socket as fd 3; it takes no arguments."
                );
                return ExitCode::from(EXIT_SETUP);
            }
        }
    }
    xdpdns_common::logging::init("info");
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn run() -> anyhow::Result<()> {
    privileges::check_and_trim().context("privileges")?;
    privileges::lock_down().context("locking the process down")?;
    let control = Control::from_inherited()?;
    let (init, fds) = control
        .receive_init(Duration::from_secs(10))
        .context("waiting for the loader's configuration")?;
    let (sockets, forward_fds) =
        ForwardFds::split(fds, init.kernel_sockets.len(), init.forward.as_ref(), true)
            .context("the loader sent the wrong number of descriptors")?;
    let _span = tracing::info_span!("dataplane", queue = init.queue_id).entered();
    privileges::set_name(&format!("xdpdns-dp-q{}", init.queue_id));

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }

    let ring_size = (init.frames / 2).max(32);
    let cfg = XskConfig {
        ifname: init.ifname.clone(),
        ifindex: init.ifindex,
        queue_id: init.queue_id,
        frames: init.frames,
        frame_size: init.frame_size,
        ring_size,
        bind_mode: init.bind_mode,
    };
    let xsk = match Xsk::open(&cfg) {
        Ok(x) => x,
        Err(e) => {
            control.send_failure(SetupFailure {
                stage: e.stage().into(),
                error: e.to_string(),
                errno: e.errno(),
            });
            bail!(e);
        }
    };
    let forwarder = match (init.forward.clone(), forward_fds) {
        (Some(spec), Some(fds)) => {
            let mut f = Forwarder::open(init.queue_id, spec, fds).context("forwarding set-up")?;
            f.set_listen(&init.kernel_sockets);
            Some(f)
        }
        _ => None,
    };
    let zero_copy = xsk.zero_copy();
    let umem_bytes = xsk.umem_bytes() as u64;
    let engine = Engine::new(
        Pipeline::new(&init.answer, init.forward.as_ref()),
        forwarder,
    );
    let mut worker = Worker::new(
        xsk,
        engine,
        KernelPath::new(sockets, init.kernel_sockets.clone()),
        control,
        Tuning {
            batch: init.batch_size,
            stats_interval: Duration::from_millis(u64::from(init.stats_interval_ms)),
            idle_nap: Duration::from_micros(u64::from(init.idle_nap_us)),
        },
        stop,
    )
    .context("setting up the loop")?;
    worker.set_tally(init.answer.tally);
    let stocked = worker.stock_fill_ring();
    worker
        .control()
        .send_ready(
            XskReady {
                protocol: PROTOCOL_VERSION,
                zero_copy,
                umem_bytes,
                ring_size,
            },
            std::os::fd::AsFd::as_fd(worker.xsk()),
        )
        .context("handing the AF_XDP socket to the loader")?;
    // The socket is bound: no capability is needed any more.
    privileges::drop_all().context("dropping capabilities")?;
    #[cfg(feature = "test-hooks")]
    {
        xdpdns_dataplane::sandbox::arm_forbidden_call_on_sigusr2().context("test hook")?;
        xdpdns_dataplane::hooks::lie(
            init.queue_id,
            worker.control(),
            std::os::fd::AsFd::as_fd(worker.xsk()),
        );
    }
    // From here on only the loop's system calls are allowed.
    xdpdns_dataplane::sandbox::install().context("installing the seccomp filter")?;
    #[cfg(feature = "test-hooks")]
    xdpdns_dataplane::hooks::probe_sandbox(init.queue_id, worker.control().fd());
    info!(
        ifname = %init.ifname,
        zero_copy,
        umem_bytes,
        ring_size,
        fill = stocked,
        kernel_sockets = init.kernel_sockets.len(),
        "serving"
    );
    let exit = worker.run()?;
    let c = worker.counters();
    info!(
        ?exit,
        xsk_received = c.xsk.received,
        xsk_answered = c.xsk.answered,
        xsk_dropped = c.xsk.dropped_total(),
        kernel_received = c.kernel.received,
        kernel_answered = c.kernel.answered,
        "stopped"
    );
    if exit == Exit::LoaderGone {
        bail!("the loader went away");
    }
    Ok(())
}
