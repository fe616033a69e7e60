//! `xdpdns run`: preflight, attach, start the dataplanes, serve until told to
//! stop, then leave nothing behind.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use xdpdns_common::maps::XdpOutcome;

use crate::bpf;
use crate::control;
use crate::dataplane::spawn::Template;
use crate::dataplane::supervisor;
use crate::instance::{self, Instance};
use crate::metrics;
use crate::plan::Plan;
use crate::reload;
use crate::state::{Event, Shared};
use crate::system::{bpffs, capabilities, memlock};

/// How long shutdown waits for supervisors to stop their dataplanes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often systemd's STATUS= line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

pub async fn run(plan: Plan, config_path: PathBuf) -> anyhow::Result<()> {
    for w in &plan.warnings {
        warn!("{w}");
    }
    preflight(&plan)?;
    let instance = Instance::acquire(&plan.config.instance, &plan.runtime_dir)?;
    let forwarding = crate::backends::prepare(&plan).context("preparing forwarding")?;
    let mut destinations = plan.config.redirected();
    if plan.config.xdp.redirect
        && let Some(f) = &forwarding
    {
        destinations.extend(f.destinations());
    }
    let attached = bpf::attach(&plan, &destinations).context("attaching the XDP program")?;
    info!(
        interface = %plan.interface.name,
        ifindex = plan.interface.ifindex,
        program_id = attached.prog_id,
        xdp_mode = attached.mode.map(|m| m.name()).unwrap_or("unknown"),
        requested = ?plan.config.xdp.mode,
        origin = ?attached.origin,
        pins = %attached.pin_dir().display(),
        "XDP program attached"
    );

    let template = match Template::new(&plan) {
        Ok(t) => t,
        Err(e) => {
            let _ = attached.detach();
            return Err(e.into());
        }
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Rc::new(Shared::new(
        plan,
        config_path,
        template,
        attached,
        events_tx,
        stop_rx,
        forwarding,
    ));
    let local = tokio::task::LocalSet::new();
    let result = local
        .run_until(serve(shared.clone(), &instance, &mut events, stop_tx))
        .await;
    // Let the remaining tasks (control connections) wind down.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, local).await;

    log_summary(&shared);
    if let Some(program) = shared.take_program() {
        let pins = program.pin_dir().display().to_string();
        match program.detach() {
            Ok(()) => info!(%pins, "XDP program detached, pins removed"),
            Err(e) => error!(%pins, error = %e, "could not remove every pin"),
        }
    }
    drop(instance);
    result
}

fn preflight(plan: &Plan) -> anyhow::Result<()> {
    let c = &plan.config;
    let missing = capabilities::missing(&capabilities::needed(
        plan.low_ports,
        c.dataplane.keep_ipc_lock,
    ))
    .context("reading this process's capabilities")?;
    if !missing.is_empty() {
        bail!(capabilities::describe_missing(&missing));
    }
    if !c.dataplane.keep_ipc_lock {
        let limit = memlock::raise_soft_to_hard().context("raising RLIMIT_MEMLOCK")?;
        if let Some(m) = memlock::shortfall(
            plan.umem_total,
            plan.queues.len(),
            limit.soft,
            &c.dataplane.user,
        ) {
            bail!(m);
        }
    }
    if bpffs::ensure(&c.xdp.pin_root)? {
        info!(mount = bpffs::DEFAULT_MOUNT, "mounted a BPF filesystem");
    }
    Ok(())
}

async fn serve(
    shared: Rc<Shared>,
    instance: &Instance,
    events: &mut mpsc::UnboundedReceiver<Event>,
    stop: watch::Sender<bool>,
) -> anyhow::Result<()> {
    let socket_path = instance::control_socket(instance.dir());
    let listener = control::bind(&socket_path, shared.plan.config.control.group.as_deref())
        .with_context(|| format!("binding the control socket {}", socket_path.display()))?;
    let control_task = tokio::task::spawn_local(control::serve(listener, shared.clone()));
    let metrics_task = match &shared.plan.config.metrics {
        Some(m) => {
            let listener = metrics::bind(m.address)
                .await
                .with_context(|| format!("metrics.address: cannot listen on {}", m.address))?;
            info!(address = %m.address, "Prometheus metrics at /metrics");
            Some(tokio::task::spawn_local(metrics::serve(
                listener,
                shared.clone(),
            )))
        }
        None => None,
    };
    for q in shared.plan.queues.clone() {
        supervisor::start(q, &shared);
    }
    let mut tcp_tasks = Vec::new();
    if shared.forwarding().is_some() && shared.plan.config.forwarding.tcp {
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(
            shared.plan.config.forwarding.tcp_max_connections as usize,
        ));
        for l in &shared.plan.config.listen {
            let listener = crate::tcp::bind(l.address)
                .with_context(|| format!("binding TCP on {}", l.address))?;
            tcp_tasks.push(tokio::task::spawn_local(crate::tcp::serve(
                listener,
                shared.clone(),
                limit.clone(),
            )));
        }
    }
    shared.restart_health();

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let mut watchdog_tick = tokio::time::interval(if watchdog {
        Duration::from_micros(watchdog_usec / 2)
    } else {
        Duration::from_secs(3600)
    });
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    let mut registered = std::collections::BTreeSet::new();
    let mut ready = false;
    let outcome = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Registered(q)) => {
                    registered.insert(q);
                    let wanted = shared.supervised_queues();
                    if !ready && wanted.iter().all(|q| registered.contains(q)) {
                        ready = true;
                        info!(queues = wanted.len(), control = %socket_path.display(), "ready: every queue is served over AF_XDP");
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                        notify_status(&shared, &registered);
                    }
                }
                Some(Event::SetupFailed(q, reason)) if !ready => {
                    break Err(anyhow::anyhow!("queue {q}: dataplane {reason}"));
                }
                Some(Event::SetupFailed(q, reason)) => warn!(queue = q, %reason, "dataplane setup failed"),
                Some(Event::Exited(q)) => {
                    registered.remove(&q);
                }
                None => break Ok(()),
            },
            _ = term.recv() => { info!("SIGTERM: stopping"); break Ok(()) }
            _ = int.recv() => { info!("SIGINT: stopping"); break Ok(()) }
            _ = hup.recv() => {
                let path = shared.config_path();
                info!(path = %path.display(), "SIGHUP: reloading");
                if let Err(e) = reload::reload(&shared, &path) {
                    error!(error = %e, "reload refused; the running configuration is unchanged");
                }
            }
            _ = watchdog_tick.tick(), if watchdog => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            _ = status_tick.tick() => notify_status(&shared, &registered),
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = stop.send(true);
    for s in shared.take_supervisors() {
        let _ = s.task.await;
    }
    control_task.abort();
    shared.stop_health();
    for h in tcp_tasks {
        h.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    outcome
}

/// systemd's one-line STATUS=.
fn notify_status(shared: &Shared, registered: &std::collections::BTreeSet<u32>) {
    let t = shared.totals();
    let line = format!(
        "{}/{} queues on AF_XDP; {} answers over AF_XDP, {} over the kernel path",
        registered.len(),
        shared.supervised_queues().len(),
        t.xsk.answered,
        t.kernel.answered
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&line)]);
}

fn log_summary(shared: &Shared) {
    for (q, state) in shared.queues() {
        let t = state.totals();
        info!(
            queue = q,
            restarts = state.restarts,
            xsk_received = t.xsk.received,
            xsk_answered = t.xsk.answered,
            xsk_dropped = t.xsk.dropped_total(),
            kernel_received = t.kernel.received,
            kernel_answered = t.kernel.answered,
            kernel_dropped = t.kernel.dropped_total(),
            rx_dropped = t.xsk_kernel.rx_dropped,
            "queue summary"
        );
    }
    let x = shared.xdp_counters();
    info!(
        redirect = x.get(XdpOutcome::Redirect),
        no_socket = x.get(XdpOutcome::NoSocket),
        too_large = x.get(XdpOutcome::TooLarge),
        other_dest = x.get(XdpOutcome::OtherDest),
        "XDP program summary"
    );
}
