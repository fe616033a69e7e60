//! `xdpdns run`: preflight, attach, start the dataplanes, serve until told to
//! stop, then leave nothing behind.
//!
//! The run loop owns every part of the running instance — the attached
//! program, the queues and their supervisors, forwarding and its health
//! checks, the TCP relay — and is the only place they meet: supervisors and
//! health tasks report to it over channels, control requests arrive as
//! messages, and what the dataplanes must know is published on `watch`
//! channels ([`DataplaneSpec`], backend health) that the supervisors follow.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use xdpdns_common::config::{BlockAction, Live, RuleSpec};
use xdpdns_common::ipc::BackendLive;
use xdpdns_common::maps::XdpOutcome;
use xdpdns_common::net::Prefix;
use xdpdns_common::stats::TcpCounters;

use crate::blocks::RuntimeBlocks;
use crate::bpf::{self, Attached, Steering};
use crate::control::{self, Ask, Request, Response};
use crate::dynamic::Dynamic;
use crate::forwarding::{self, Forwarding, health};
use crate::instance::{self, Instance};
use crate::metrics;
use crate::plan::Plan;
use crate::reload;
use crate::status::{Sources, Status, TcpStatus, WorkerStatus};
use crate::system::{bpffs, capabilities, memlock, nofile};
use crate::workers::DataplaneSpec;
use crate::workers::queues::{Notice, Queues};
use crate::workers::service::{Inputs, ServiceContext, Services, TcpSpec};
use crate::workers::spawn::Template;
use crate::workers::supervisor::Phase;
use crate::workers::supervisor::{Context as SupervisorContext, QueueCommand, QueueEvent};

/// How long shutdown waits for the remaining tasks to wind down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often systemd's STATUS= line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

pub async fn run(plan: Plan, live: Live, config_path: PathBuf) -> anyhow::Result<()> {
    for w in &plan.warnings {
        warn!("{w}");
    }
    preflight(&plan, &live)?;
    let instance = Instance::acquire(&plan.fixed.instance, &plan.runtime_dir)?;
    let forwarding = forwarding::prepare(&plan, &live).context("preparing forwarding")?;
    let attached = bpf::attach(
        &plan,
        &steering(&plan, &live, forwarding.as_ref(), &RuntimeBlocks::default()),
    )
    .context("attaching the XDP program")?;
    info!(
        interface = %plan.interface.name,
        ifindex = plan.interface.ifindex,
        program_id = attached.prog_id,
        xdp_mode = attached.mode.map(|m| m.name()).unwrap_or("unknown"),
        requested = ?plan.fixed.xdp.mode,
        origin = ?attached.origin,
        pins = %attached.pin_dir().display(),
        "XDP program attached"
    );
    let templates = match Templates::new(&plan) {
        Ok(t) => t,
        Err(e) => {
            let _ = attached.detach();
            return Err(e.into());
        }
    };

    let local = tokio::task::LocalSet::new();
    let (result, program) = local
        .run_until(async {
            let (mut running, channels) =
                Running::new(plan, live, config_path, attached, templates, forwarding);
            let result = running.serve(&instance, channels).await;
            running.log_summary();
            running.shutdown().await;
            (result, running.program)
        })
        .await;
    // Let the remaining tasks (control connections) wind down.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, local).await;

    let pins = program.pin_dir().display().to_string();
    match program.detach() {
        Ok(()) => info!(%pins, "XDP program detached, pins removed"),
        Err(e) => error!(%pins, error = %e, "could not remove every pin"),
    }
    drop(instance);
    result
}

fn preflight(plan: &Plan, live: &Live) -> anyhow::Result<()> {
    let c = &plan.fixed;
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
    let files = nofile::raise_soft_to_hard().context("raising RLIMIT_NOFILE")?;
    let f = &c.forwarding;
    let families: u64 = if live.backend.iter().any(|b| b.address.is_ipv4())
        && live.backend.iter().any(|b| b.address.is_ipv6())
    {
        2
    } else {
        1
    };
    let (reserved, per_dataplane) = if f.enabled {
        (
            families * u64::from(f.ports),
            live.listen.len() as u64 + live.backend.len() as u64 * u64::from(f.backend_sockets),
        )
    } else {
        (0, live.listen.len() as u64)
    };
    // The workers inherit the limit: the loader holds the reservations and
    // one dataplane's descriptors at a time; a TCP worker its connections.
    let loader = nofile::need(reserved, per_dataplane, 0);
    let tcp_worker = nofile::need(
        0,
        live.listen.len() as u64,
        u64::from(live.tcp.max_connections)
            + live.backend.len() as u64 * u64::from(live.tcp.backend_connections),
    );
    if let Some(m) = nofile::shortfall(loader.max(tcp_worker), files) {
        bail!(m);
    }
    if bpffs::ensure(&c.xdp.pin_root)? {
        info!(mount = bpffs::DEFAULT_MOUNT, "mounted a BPF filesystem");
    }
    Ok(())
}

/// What the XDP program is told under `live` with `forwarding`, on `plan`'s interface.
fn steering(
    plan: &Plan,
    live: &Live,
    forwarding: Option<&Forwarding>,
    blocks: &RuntimeBlocks,
) -> Steering {
    let xsk = live.xdp.redirect.then_some(forwarding).flatten();
    let mut abuse = live.abuse.clone();
    for b in blocks.list() {
        if !abuse.blocks.contains(&b.prefix) {
            abuse.blocks.push(b.prefix);
        }
        if b.tcp && !abuse.tcp_blocks.contains(&b.prefix) {
            abuse.tcp_blocks.push(b.prefix);
        }
        // A run-time block of a configured prefix says what it gets.
        abuse.answered_blocks.retain(|(p, _)| *p != b.prefix);
        if b.action != BlockAction::Drop {
            abuse.answered_blocks.push((b.prefix, b.action));
        }
    }
    Steering {
        listen: live.redirected(),
        forward_sources: xsk.map(Forwarding::xsk_sources).unwrap_or_default(),
        backends: xsk.map(Forwarding::xsk_backends).unwrap_or_default(),
        acl: live.acl.clone(),
        abuse,
        verify_checksums: live.xsk.verify_checksums,
        no_tx: !live.xdp.tx_answers.enabled(plan.interface.link.veth),
    }
}

/// What dataplanes are given, from the live configuration and forwarding.
fn dataplane_spec(live: &Live, forwarding: Option<&Forwarding>) -> DataplaneSpec {
    DataplaneSpec {
        answer: live.answer_spec(),
        listen: live.listen.clone(),
        forward: forwarding.map(|f| f.spec().clone()),
        batch_size: live.xsk.batch_size,
        idle_nap_us: live.xsk.idle_nap_us,
        stats_interval_ms: live.dataplane.stats_interval_ms,
        cpus: live.dataplane.cpus.clone(),
        supervisor: live.supervisor.clone(),
    }
}

/// What TCP workers are given, from the live configuration and forwarding.
fn tcp_spec(live: &Live, forwarding: Option<&Forwarding>) -> TcpSpec {
    TcpSpec {
        answer: live.answer_spec(),
        forward: forwarding.map(|f| f.spec().clone()),
        limits: live.tcp,
        listen: live.listen.clone(),
        stats_interval_ms: live.dataplane.stats_interval_ms,
        supervisor: live.supervisor.clone(),
    }
}

/// Every kind of worker's template, made before anything starts (each
/// opens its binary now, as the loader).
pub struct Templates {
    dataplane: Template,
    tcp: Template,
    metrics: Option<Template>,
}

impl Templates {
    fn new(plan: &Plan) -> Result<Templates, crate::workers::spawn::SpawnError> {
        Ok(Templates {
            dataplane: Template::dataplane(plan)?,
            tcp: Template::tcp(plan)?,
            metrics: match plan.fixed.metrics {
                Some(_) => Some(Template::metrics(plan)?),
                None => None,
            },
        })
    }
}

/// How often the exporter gets a new snapshot.
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// The receiving ends of the run loop's channels.
struct Inbox {
    queues: mpsc::UnboundedReceiver<QueueEvent>,
    health: mpsc::UnboundedReceiver<health::Report>,
    asks: mpsc::UnboundedReceiver<Ask>,
}

struct Running {
    plan: Plan,
    live: Live,
    config_path: PathBuf,
    started_at: Instant,
    program: Attached,
    queues: Queues,
    forwarding: Option<Forwarding>,
    services: Services,
    spec_tx: watch::Sender<Arc<DataplaneSpec>>,
    live_tx: watch::Sender<Arc<Vec<BackendLive>>>,
    tcp_tx: watch::Sender<Arc<TcpSpec>>,
    snapshot_tx: watch::Sender<Option<Arc<std::os::fd::OwnedFd>>>,
    stop_tx: watch::Sender<bool>,
    health_tx: mpsc::UnboundedSender<health::Report>,
    asks_tx: mpsc::UnboundedSender<Ask>,
    registered: BTreeSet<u32>,
    ready: bool,
    /// Blocks added with `xdpdns block add` and by the dynamic rules.
    blocks: RuntimeBlocks,
    dynamic: Dynamic,
}

impl Running {
    fn new(
        plan: Plan,
        live: Live,
        config_path: PathBuf,
        program: Attached,
        templates: Templates,
        forwarding: Option<Forwarding>,
    ) -> (Running, Inbox) {
        let live_dynamic = (live.abuse.dynamic.clone(), live.abuse.tally());
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (health_tx, health_rx) = mpsc::unbounded_channel();
        let (asks_tx, asks_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (spec_tx, spec_rx) =
            watch::channel(Arc::new(dataplane_spec(&live, forwarding.as_ref())));
        let (live_tx, live_rx) = watch::channel(Arc::new(
            forwarding
                .as_ref()
                .map(|f| f.live().to_vec())
                .unwrap_or_default(),
        ));
        let (tcp_tx, tcp_rx) = watch::channel(Arc::new(tcp_spec(&live, forwarding.as_ref())));
        let (snapshot_tx, snapshot_rx) = watch::channel(None);
        let f = &plan.fixed;
        let Templates {
            dataplane,
            tcp,
            metrics,
        } = templates;
        let service = |template| {
            Rc::new(ServiceContext {
                template,
                instance: f.instance.clone(),
                metrics_address: f.metrics.as_ref().map(|m| m.address),
                metrics_connections: 16,
                metrics_allow: f.metrics.as_ref().map(|m| m.allowed()).unwrap_or_default(),
                cache: forwarding.as_ref().and_then(Forwarding::cache_fd),
            })
        };
        let inputs = || Inputs {
            spec: tcp_rx.clone(),
            live: live_rx.clone(),
            snapshot: snapshot_rx.clone(),
            stop: stop_rx.clone(),
        };
        let services = Services::start(service(tcp), f.tcp.workers, metrics.map(service), inputs);
        let ctx = SupervisorContext {
            template: dataplane,
            instance: f.instance.clone(),
            ifname: plan.interface.name.clone(),
            ifindex: plan.interface.ifindex,
            frames: f.xsk.frames,
            frame_size: f.xsk.frame_size,
            bind_mode: f.xsk.bind_mode,
            forward: forwarding.as_ref().map(Forwarding::resources),
        };
        let queues = Queues::new(ctx, spec_rx, live_rx, stop_rx, queue_tx);
        let running = Running {
            plan,
            live,
            config_path,
            started_at: Instant::now(),
            program,
            queues,
            forwarding,
            services,
            spec_tx,
            live_tx,
            tcp_tx,
            snapshot_tx,
            stop_tx,
            health_tx,
            asks_tx,
            registered: BTreeSet::new(),
            ready: false,
            blocks: RuntimeBlocks::default(),
            dynamic: Dynamic::new(live_dynamic.0, live_dynamic.1),
        };
        let inbox = Inbox {
            queues: queue_rx,
            health: health_rx,
            asks: asks_rx,
        };
        (running, inbox)
    }

    fn start_queue(&mut self, queue: u32) -> anyhow::Result<()> {
        let slot = self
            .program
            .xsk_slot(queue)
            .with_context(|| format!("queue {queue}: XSKMAP slot"))?;
        self.queues.start(queue, slot);
        Ok(())
    }

    async fn serve(&mut self, instance: &Instance, mut inbox: Inbox) -> anyhow::Result<()> {
        let socket_path = instance::control_socket(instance.dir());
        let listener = control::bind(&socket_path, self.plan.fixed.control.group.as_deref())
            .with_context(|| format!("binding the control socket {}", socket_path.display()))?;
        let control_task = tokio::task::spawn_local(control::serve(
            listener,
            self.asks_tx.clone(),
            control::Roles::new(&self.plan.fixed.control)?,
        ));
        if let Some(m) = &self.plan.fixed.metrics {
            info!(address = %m.address, "Prometheus metrics at /metrics (served by xdpdns-metrics)");
        }
        for q in self.plan.queues.clone() {
            self.start_queue(q)?;
        }
        if let Some(f) = &mut self.forwarding {
            f.start_health(&self.live, self.plan.interface.ifindex, &self.health_tx);
        }

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
        let mut metrics_tick = tokio::time::interval(METRICS_EVERY);
        let mut block_tick = tokio::time::interval(Duration::from_millis(100));
        let metrics_on = self.plan.fixed.metrics.is_some();
        let outcome = loop {
            tokio::select! {
                Some(ev) = inbox.queues.recv() => {
                    if let Err(e) = self.on_queue_event(ev, &socket_path) {
                        break Err(e);
                    }
                }
                Some(report) = inbox.health.recv() => self.on_health(report),
                Some(ask) = inbox.asks.recv() => {
                    let response = self.answer(ask.request);
                    let _ = ask.reply.send(response);
                }
                _ = term.recv() => { info!("SIGTERM: stopping"); break Ok(()) }
                _ = int.recv() => { info!("SIGINT: stopping"); break Ok(()) }
                _ = hup.recv() => {
                    let path = self.config_path.clone();
                    info!(path = %path.display(), "SIGHUP: reloading");
                    if let Err(e) = self.reload(&path) {
                        error!(error = %e, "reload refused; the running configuration is unchanged");
                    }
                }
                _ = watchdog_tick.tick(), if watchdog => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
                _ = status_tick.tick() => self.notify_status(),
                _ = metrics_tick.tick(), if metrics_on => self.publish_metrics(),
                _ = block_tick.tick() => self.police_blocks(),
            }
        };
        control_task.abort();
        outcome
    }

    fn on_queue_event(&mut self, ev: QueueEvent, socket: &std::path::Path) -> anyhow::Result<()> {
        match self.queues.on_event(ev) {
            Notice::None => {}
            Notice::Registered(q) => {
                self.registered.insert(q);
                let wanted = self.queues.supervised();
                if !self.ready && wanted.iter().all(|q| self.registered.contains(q)) {
                    self.ready = true;
                    info!(queues = wanted.len(), control = %socket.display(), "ready: every queue is served over AF_XDP");
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                    self.notify_status();
                }
            }
            Notice::Unregistered(q) => {
                self.registered.remove(&q);
            }
            // Before anything serves, a queue that cannot set up is a
            // configuration error; once queues serve, it is that queue's.
            Notice::SetupFailed(q, reason) if !self.ready => {
                bail!("queue {q}: dataplane {reason}");
            }
            Notice::SetupFailed(q, reason) => warn!(queue = q, %reason, "dataplane setup failed"),
            Notice::Clients(counts) => self.dynamic.observe(Instant::now(), &counts),
        }
        Ok(())
    }

    fn on_health(&mut self, report: health::Report) {
        let Some(f) = &mut self.forwarding else {
            return;
        };
        if f.apply(&report) {
            self.live_tx.send_replace(Arc::new(f.live().to_vec()));
        }
    }

    fn answer(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Reload {} => {
                let path = self.config_path.clone();
                match self.reload(&path) {
                    Ok(lines) => Response::Done(lines),
                    Err(e) => {
                        error!(path = %path.display(), error = %e, "reload refused; the running configuration is unchanged");
                        Response::Error(e)
                    }
                }
            }
            Request::BlockAdd {
                prefix,
                for_s,
                tcp,
                action,
            } => {
                let p: Prefix = match prefix.parse() {
                    Ok(p) => p,
                    Err(e) => return Response::Error(format!("{prefix:?}: {e}")),
                };
                let d = for_s.map(Duration::from_secs);
                if let Err(e) =
                    self.blocks
                        .add(p, d, (tcp, action), &self.live.abuse.exempt, Instant::now())
                {
                    return Response::Error(e.to_string());
                }
                match self.resteer() {
                    Ok(()) => {
                        let how =
                            for_s.map_or("until deleted".to_string(), |s| format!("for {s}s"));
                        let how = if tcp { format!("{how}, TCP too") } else { how };
                        let how = match action {
                            BlockAction::Drop => how,
                            a if self
                                .live
                                .xdp
                                .tx_answers
                                .enabled(self.plan.interface.link.veth) =>
                            {
                                format!("{how}, answered {}", a.name())
                            }
                            a => format!(
                                "{how}, {} wanted but dropped: XDP_TX does not reach this \
                                 interface's peer (xdp.tx_answers)",
                                a.name()
                            ),
                        };
                        info!(prefix = %p, %how, "blocked");
                        Response::Done(vec![format!("{p} blocked {how}")])
                    }
                    Err(e) => {
                        let _ = self.blocks.remove(p);
                        Response::Error(e)
                    }
                }
            }
            Request::BlockDel { prefix } => {
                let p: Prefix = match prefix.parse() {
                    Ok(p) => p,
                    Err(e) => return Response::Error(format!("{prefix:?}: {e}")),
                };
                if let Err(e) = self.blocks.remove(p) {
                    return Response::Error(e.to_string());
                }
                match self.resteer() {
                    Ok(()) => {
                        info!(prefix = %p, "block lifted");
                        Response::Done(vec![format!("{p} no longer blocked")])
                    }
                    Err(e) => Response::Error(e),
                }
            }
            Request::BlockList {} => {
                let now = Instant::now();
                let hits = self.program.block_hits();
                let hit = |p: &Prefix| hits.get(p).copied().unwrap_or(0);
                let mut lines: Vec<String> = self
                    .blocks
                    .list()
                    .iter()
                    .map(|b| match b.until {
                        Some(u) => format!(
                            "{} {}{}, {}s left (added {}s ago), {} hits",
                            b.prefix,
                            b.action.name(),
                            if b.tcp { " (UDP and TCP)" } else { "" },
                            u.saturating_duration_since(now).as_secs(),
                            now.duration_since(b.added).as_secs(),
                            hit(&b.prefix)
                        ),
                        None => format!(
                            "{} {}{}, until deleted (added {}s ago), {} hits",
                            b.prefix,
                            b.action.name(),
                            if b.tcp { " (UDP and TCP)" } else { "" },
                            now.duration_since(b.added).as_secs(),
                            hit(&b.prefix)
                        ),
                    })
                    .collect();
                for p in &self.live.abuse.blocks {
                    let tcp = self.live.abuse.tcp_blocks.contains(p);
                    let action = self
                        .live
                        .abuse
                        .answered_blocks
                        .iter()
                        .find(|(q, _)| q == p)
                        .map_or(BlockAction::Drop, |(_, a)| *a);
                    lines.push(format!(
                        "{p} {}{}, configured, {} hits",
                        action.name(),
                        if tcp { " (UDP and TCP)" } else { "" },
                        hit(p)
                    ));
                }
                if lines.is_empty() {
                    lines.push("no blocks".into());
                }
                Response::Done(lines)
            }
            Request::CachePurge {
                name,
                qtype,
                suffix,
            } => {
                if self.plan.fixed.cache_slots == 0 || self.forwarding.is_none() {
                    return Response::Error(
                        "no packet cache: set [cache] entries (and restart)".into(),
                    );
                }
                let wire = match xdpdns_common::dns::name_to_wire(&name) {
                    Ok(w) => w,
                    Err(e) => return Response::Error(e),
                };
                let qtype = match qtype.as_deref().map(|t| {
                    xdpdns_common::dns::qtype_from_name(t).ok_or(format!("{t:?}: not a type"))
                }) {
                    Some(Err(e)) => return Response::Error(e),
                    Some(Ok(t)) => Some(t),
                    None => None,
                };
                // The cache is shared: one running dataplane purges it for all.
                let running = self
                    .queues
                    .states()
                    .iter()
                    .find(|(_, s)| s.phase == Phase::Running)
                    .map(|(q, _)| *q);
                let purge = xdpdns_common::ipc::CachePurge {
                    name: wire,
                    qtype,
                    suffix,
                };
                match running {
                    Some(q) if self.queues.command(q, QueueCommand::PurgeCache(purge)) => {
                        info!(%name, ?qtype, suffix, queue = q, "cache purge");
                        Response::Done(vec![format!(
                            "purging {name}{}{} (queue {q}'s dataplane, for every queue); \
                             `xdpdns cache stats` counts the entries removed as purged",
                            if suffix { " and below" } else { "" },
                            qtype.map_or(String::new(), |t| format!(", type {t}"))
                        )])
                    }
                    _ => Response::Error("no dataplane is running to purge the cache".into()),
                }
            }
            Request::RestartQueue { queue } => {
                if self.queues.command(queue, QueueCommand::Restart) {
                    Response::Done(vec![format!("queue {queue}: dataplane being replaced")])
                } else {
                    Response::Error(format!(
                        "queue {queue} has no supervisor (not in xdp.queues)"
                    ))
                }
            }
        }
    }

    /// Lifts expired blocks and adds those the dynamic rules call for.
    fn police_blocks(&mut self) {
        let now = Instant::now();
        let mut changed = self.blocks.expire(now);
        for (p, d, action) in self.dynamic.evaluate(now) {
            if self.blocks.list().iter().any(|b| b.prefix == p) {
                continue;
            }
            match self
                .blocks
                .add(p, Some(d), (false, action), &self.live.abuse.exempt, now)
            {
                Ok(()) => {
                    warn!(prefix = %p, secs = d.as_secs(), "blocked by a dynamic rule");
                    changed = true;
                }
                Err(e) => warn!(prefix = %p, error = %e, "a dynamic rule could not block"),
            }
        }
        if changed && let Err(e) = self.resteer() {
            error!(error = %e, "cannot update the blocks in the XDP program");
        }
    }

    /// Tells the XDP program the live configuration's steering again, with
    /// the run-time blocks (policy tries refilled in the inactive slot).
    fn resteer(&mut self) -> Result<(), String> {
        let s = steering(
            &self.plan,
            &self.live,
            self.forwarding.as_ref(),
            &self.blocks,
        );
        self.program.steer(&s).map_err(|e| e.to_string())
    }

    fn tcp_status(&self, t: &TcpCounters) -> TcpStatus {
        let workers = self
            .services
            .states
            .iter()
            .map(|s| {
                let s = s.borrow();
                WorkerStatus {
                    name: s.role.name(),
                    pid: s.pid,
                    running: s.phase == Phase::Running,
                    restarts: s.restarts,
                    uptime_secs: s
                        .started_at
                        .filter(|_| s.pid.is_some())
                        .map(|t| t.elapsed().as_secs()),
                    last_exit: s.last_exit.clone(),
                }
            })
            .collect();
        TcpStatus::from_counters(t, workers)
    }

    /// Renders the metrics and hands them to the exporter.
    fn publish_metrics(&self) {
        let text = metrics::render(&self.status());
        match metrics::snapshot(&text) {
            Ok(fd) => {
                self.snapshot_tx.send_replace(Some(Arc::new(fd)));
            }
            Err(e) => warn!(error = %e, "cannot make a metrics snapshot"),
        }
    }

    fn status(&self) -> Status {
        let tcp = self.services.tcp_totals();
        Status::collect(&Sources {
            instance: &self.plan.fixed.instance,
            interface: &self.plan.interface.name,
            ifindex: self.plan.interface.ifindex,
            program: (
                self.program.prog_id,
                self.program.mode.map(|m| m.name()),
                self.program.pin_dir().display().to_string(),
            ),
            xdp: self.program.counters(),
            uptime: self.started_at.elapsed(),
            config_path: &self.config_path,
            live: &self.live,
            queues: self.queues.states(),
            forwarding: self.forwarding.as_ref().map(|f| (f.spec(), f.live())),
            tcp: self.tcp_status(&tcp),
            tcp_pipeline: Some(&tcp.pipeline),
            exporter: self.services.exporter(),
            listen_counters: self.program.listen_counters(self.live.redirected().len()),
            steering: self
                .forwarding
                .as_ref()
                .and_then(|f| f.resources().steer_counters()),
        })
    }

    /// Reads, validates and applies `path`. On error nothing has changed.
    fn reload(&mut self, path: &std::path::Path) -> Result<Vec<String>, String> {
        let new = crate::config_file::load(path).map_err(|e| e.to_string())?;
        let changes = reload::diff(
            &self.plan.fixed,
            &self.live,
            &new,
            self.plan.interface.queues,
        )?;
        let new = new.live;
        if changes.on_next_start.contains(&"dataplane.cpus") {
            crate::system::cpus::check(&new.dataplane.cpus)?;
        }
        let fixed = &self.plan.fixed;
        if !fixed.dataplane.keep_ipc_lock && !changes.queues_added.is_empty() {
            let queues = self.queues.supervised().len() + changes.queues_added.len()
                - changes.queues_removed.len();
            let need = fixed.umem_bytes_per_queue() * queues as u64;
            let limit = memlock::current().map_err(|e| e.to_string())?.soft;
            if let Some(m) = memlock::shortfall(need, queues, limit, &fixed.dataplane.user) {
                return Err(m);
            }
        }
        // Everything that can fail is resolved or bound before anything changes.
        let reloaded = match (changes.backends, &self.forwarding) {
            (true, Some(f)) => Some(f.respec(&new).map_err(|e| e.to_string())?),
            _ => None,
        };
        // Steering: new addresses are added before old ones go, so an
        // address kept across the change is never missing, and the new ACL
        // takes over in one step.
        let fwd = reloaded
            .as_ref()
            .map(|r| &r.forwarding)
            .or(self.forwarding.as_ref());
        self.program
            .steer(&steering(&self.plan, &new, fwd, &self.blocks))
            .map_err(|e| e.to_string())?;
        if let Some(r) = reloaded {
            self.queues.remap_backends(&r.map);
            let mut f = r.forwarding;
            f.start_health(&new, self.plan.interface.ifindex, &self.health_tx);
            self.live_tx.send_replace(Arc::new(f.live().to_vec()));
            self.forwarding = Some(f);
        }
        if changes.rules {
            // By compiled rule, as the dataplanes map their own counters.
            let ids = |l: &Live| -> Vec<u64> {
                l.answer_spec()
                    .rules
                    .iter()
                    .map(RuleSpec::fingerprint)
                    .collect()
            };
            let map = xdpdns_common::config::rule_map(&ids(&self.live), &ids(&new));
            self.queues.remap_rule_hits(&map);
            self.services.remap_rule_hits(&map);
        }
        self.dynamic
            .set_rules(new.abuse.dynamic.clone(), new.abuse.tally());
        self.live = new;
        self.spec_tx.send_replace(Arc::new(dataplane_spec(
            &self.live,
            self.forwarding.as_ref(),
        )));
        self.tcp_tx
            .send_replace(Arc::new(tcp_spec(&self.live, self.forwarding.as_ref())));
        for q in &changes.queues_removed {
            self.queues.remove(*q);
            self.registered.remove(q);
        }
        for q in &changes.queues_added {
            self.start_queue(*q).map_err(|e| format!("{e:#}"))?;
        }
        let lines = changes.describe();
        info!(path = %path.display(), changes = ?lines, "configuration reloaded");
        Ok(lines)
    }

    /// systemd's one-line STATUS=.
    fn notify_status(&self) {
        let t = self.queues.totals();
        let line = format!(
            "{}/{} queues on AF_XDP; {} answers over AF_XDP, {} over the kernel path",
            self.registered.len(),
            self.queues.supervised().len(),
            t.xsk.answered,
            t.kernel.answered
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&line)]);
    }

    async fn shutdown(&mut self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let _ = self.stop_tx.send(true);
        self.queues.join().await;
        self.services.join().await;
        if let Some(f) = &mut self.forwarding {
            f.stop_health();
        }
    }

    fn log_summary(&self) {
        for (q, state) in self.queues.states() {
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
        let x = self.program.counters();
        info!(
            redirect = x.get(XdpOutcome::Redirect),
            no_socket = x.get(XdpOutcome::NoSocket),
            too_large = x.get(XdpOutcome::TooLarge),
            other_dest = x.get(XdpOutcome::OtherDest),
            acl_dropped = x.get(XdpOutcome::AclDropped),
            acl_refused = x.get(XdpOutcome::AclRefused) + x.get(XdpOutcome::AclKernel),
            bad_csum = x.get(XdpOutcome::BadCsum),
            not_backend = x.get(XdpOutcome::NotBackend),
            "XDP program summary"
        );
    }
}
