//! `xdpdns run`: preflight, attach, start the dataplanes, serve until told to
//! stop, then leave nothing behind.

use std::net::SocketAddr;
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
use crate::plan::Plan;
use crate::state::{Event, Shared};
use crate::system::{bpffs, capabilities, memlock};

/// How long shutdown waits for supervisors to stop their dataplanes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub async fn run(plan: Plan) -> anyhow::Result<()> {
    for w in &plan.warnings {
        warn!("{w}");
    }
    preflight(&plan)?;
    let instance = Instance::acquire(&plan.config.instance, &plan.runtime_dir)?;
    let listen: Vec<SocketAddr> = plan.config.listen.iter().map(|l| l.address).collect();
    let attached = bpf::attach(&plan, &listen).context("attaching the XDP program")?;
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
    let queues = plan.queues.clone();
    let shared = Rc::new(Shared::new(plan, template, attached, events_tx));
    let local = tokio::task::LocalSet::new();
    let result = local
        .run_until(serve(shared.clone(), &instance, &queues, &mut events))
        .await;
    // Let supervisors finish stopping their dataplanes.
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
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
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
    queues: &[u32],
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut supervisors = Vec::new();
    for q in queues {
        supervisors.push(tokio::task::spawn_local(supervisor::supervise(
            *q,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    let socket_path = instance::control_socket(instance.dir());
    let listener = control::bind(&socket_path)
        .with_context(|| format!("binding the control socket {}", socket_path.display()))?;
    let control_task = tokio::task::spawn_local(control::serve(listener, shared.clone()));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut registered = std::collections::BTreeSet::new();
    let mut ready = false;
    let outcome = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Registered(q)) => {
                    registered.insert(q);
                    if !ready && registered.len() == queues.len() {
                        ready = true;
                        info!(queues = queues.len(), control = %socket_path.display(), "ready: every queue is served over AF_XDP");
                        let _ = sd_notify::notify(false, &[
                            sd_notify::NotifyState::Ready,
                            sd_notify::NotifyState::Status(&format!("serving {} queue(s)", queues.len())),
                        ]);
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
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    for s in supervisors {
        let _ = s.await;
    }
    control_task.abort();
    outcome
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
