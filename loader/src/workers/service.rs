//! Supervising the workers that are not dataplanes: TCP workers and the
//! metrics exporter. Each has a task here that binds what the worker
//! serves on (the loader alone may bind port 53), starts it with no
//! capability, hands the sockets over and keeps no copy, relays its
//! counters after checking them, pushes reloads and backend health, and
//! restarts it with back-off when it dies, hangs or misbehaves. What a
//! worker sends is bounded (message size, descriptor count), validated
//! (shape, credentials) and rate-limited: a worker that floods or lies is
//! killed and replaced.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use xdpdns_common::config::{AnswerSpec, SupervisorSection, TcpLimits};
use xdpdns_common::ipc::workers::{
    FromMetrics, FromTcp, MetricsCounters, TcpConfig, TcpInit, ToMetrics, ToTcp,
    WORKER_PROTOCOL_VERSION,
};
use xdpdns_common::ipc::{BackendLive, ForwardSpec};
use xdpdns_common::stats::{DropReason, TcpCounters};

use super::backoff::Backoff;
use super::channel::{Channel, Incoming};
use super::process::{WorkerProcess, describe};
use super::spawn::{self, Template};
use super::supervisor::{KILL_TIMEOUT, Phase};
use crate::sockets;

/// How long a new worker has to say Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker has to exit after Shutdown before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(100);
/// More messages than this within a second is a flood.
const MAX_MESSAGES_PER_SECOND: u32 = 50;
/// Backlog of the listeners the loader binds for workers.
const BACKLOG: i32 = 1024;

/// What TCP workers serve with; published by the run loop.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpSpec {
    pub answer: AnswerSpec,
    pub forward: Option<ForwardSpec>,
    pub limits: TcpLimits,
    pub listen: Vec<SocketAddr>,
    pub stats_interval_ms: u32,
    pub supervisor: SupervisorSection,
}

impl TcpSpec {
    fn reconfigures(&self, old: &TcpSpec) -> bool {
        self.answer != old.answer
            || self.forward != old.forward
            || self.limits != old.limits
            || self.listen != old.listen
    }
}

/// Which worker a task supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Tcp(u32),
    Metrics,
}

impl Role {
    pub fn name(self) -> String {
        match self {
            Role::Tcp(i) => format!("tcp-{i}"),
            Role::Metrics => "metrics".into(),
        }
    }
}

/// One worker as the loader sees it, shared with the run loop (status).
#[derive(Debug, Clone)]
pub struct ServiceState {
    pub role: Role,
    pub phase: Phase,
    pub pid: Option<u32>,
    pub started_at: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Counters of earlier lives, and of the current one.
    pub tcp_base: TcpCounters,
    pub tcp_live: TcpCounters,
    pub metrics_base: MetricsCounters,
    pub metrics_live: MetricsCounters,
}

impl ServiceState {
    fn new(role: Role) -> ServiceState {
        ServiceState {
            role,
            phase: Phase::Starting,
            pid: None,
            started_at: None,
            restarts: 0,
            last_exit: None,
            tcp_base: TcpCounters::new(),
            tcp_live: TcpCounters::new(),
            metrics_base: MetricsCounters::default(),
            metrics_live: MetricsCounters::default(),
        }
    }

    /// TCP counters over every life; `open` is the current life's.
    pub fn tcp_totals(&self) -> TcpCounters {
        let mut t = self.tcp_base.clone();
        t.accumulate(&self.tcp_live);
        t.open = self.tcp_live.open;
        t
    }

    pub fn metrics_totals(&self) -> MetricsCounters {
        let (a, b) = (&self.metrics_base, &self.metrics_live);
        MetricsCounters {
            requests: a.requests + b.requests,
            refused: a.refused + b.refused,
            bad_requests: a.bad_requests + b.bad_requests,
        }
    }

    /// The current life ends: its counters join the base.
    fn retire(&mut self) {
        let mut live = std::mem::replace(&mut self.tcp_live, TcpCounters::new());
        live.open = 0;
        self.tcp_base.accumulate(&live);
        self.tcp_base.open = 0;
        let m = std::mem::take(&mut self.metrics_live);
        self.metrics_base.requests += m.requests;
        self.metrics_base.refused += m.refused;
        self.metrics_base.bad_requests += m.bad_requests;
        self.pid = None;
    }
}

/// What a service task reads.
pub struct Inputs {
    pub spec: watch::Receiver<Arc<TcpSpec>>,
    pub live: watch::Receiver<Arc<Vec<BackendLive>>>,
    /// The latest metrics text (a sealed memfd), for the exporter.
    pub snapshot: watch::Receiver<Option<Arc<OwnedFd>>>,
    pub stop: watch::Receiver<bool>,
}

/// What does not change while the instance runs.
pub struct ServiceContext {
    pub template: Template,
    pub instance: String,
    /// The exporter's address (metrics role).
    pub metrics_address: Option<SocketAddr>,
    /// HTTP connections the exporter serves at once.
    pub metrics_connections: u32,
    /// Who may scrape.
    pub metrics_allow: Vec<xdpdns_common::net::Prefix>,
    /// The shared packet cache (TCP role), sent after the listeners when
    /// the forwarding spec has one.
    pub cache: Option<Rc<OwnedFd>>,
}

/// Supervises one worker until told to stop.
pub async fn supervise(
    role: Role,
    ctx: Rc<ServiceContext>,
    state: Rc<RefCell<ServiceState>>,
    mut inputs: Inputs,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(10),
        Duration::from_secs(60),
    );
    loop {
        if *inputs.stop.borrow() {
            break;
        }
        let started = Instant::now();
        let reason = match run_once(role, &ctx, &state, &mut inputs).await {
            None => break,
            Some(reason) => reason,
        };
        {
            let mut s = state.borrow_mut();
            s.retire();
            s.restarts += 1;
            s.last_exit = Some(reason.clone());
            s.phase = Phase::BackingOff;
        }
        let delay = backoff.next(started.elapsed());
        warn!(
            worker = %role.name(),
            %reason,
            restart_in_ms = delay.as_millis() as u64,
            "{} exited; restarting it",
            ctx.template.kind()
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = inputs.stop.changed() => break,
        }
    }
    let mut s = state.borrow_mut();
    s.retire();
    s.phase = Phase::Stopped;
}

/// What the worker is handed at start or reconfiguration.
/// The descriptors a worker gets: its listeners, and (TCP, `with_cache`:
/// at start) the packet cache's memfd after them.
fn sockets_for(
    role: Role,
    ctx: &ServiceContext,
    spec: &TcpSpec,
    with_cache: bool,
) -> Result<Vec<OwnedFd>, String> {
    match role {
        Role::Tcp(_) => {
            let mut fds = spec
                .listen
                .iter()
                .map(|a| {
                    sockets::tcp_listener_shared(*a, BACKLOG)
                        .map(OwnedFd::from)
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let cached = spec.forward.as_ref().and_then(|f| f.cache).is_some();
            if let (true, true, Some(fd)) = (with_cache, cached, &ctx.cache) {
                fds.push(
                    fd.try_clone()
                        .map_err(|e| format!("the packet cache: {e}"))?,
                );
            }
            Ok(fds)
        }
        Role::Metrics => {
            let a = ctx.metrics_address.ok_or("no metrics address")?;
            sockets::tcp_listener(a, 128)
                .map(|l| vec![OwnedFd::from(l)])
                .map_err(|e| format!("metrics.address: {e}"))
        }
    }
}

fn tcp_config(spec: &TcpSpec, live: &[BackendLive], descriptors: usize) -> TcpConfig {
    let forward = spec.forward.clone().map(|mut f| {
        if live.len() == f.backends.len() {
            f.live = live.to_vec();
        }
        f
    });
    TcpConfig {
        answer: spec.answer.clone(),
        forward,
        limits: spec.limits,
        listen: spec.listen.clone(),
        descriptors: descriptors as u32,
    }
}

/// One life of the worker: `None` when told to stop, else why it ended.
async fn run_once(
    role: Role,
    ctx: &ServiceContext,
    state: &Rc<RefCell<ServiceState>>,
    inputs: &mut Inputs,
) -> Option<String> {
    let mut spec = inputs.spec.borrow_and_update().clone();
    inputs.live.borrow_and_update();
    let fds = match sockets_for(role, ctx, &spec, true) {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot bind: {e}")),
    };
    let spawned = match spawn::spawn(&ctx.template, None) {
        Ok(s) => s,
        Err(e) => return Some(e.to_string()),
    };
    let spawn::Spawned {
        mut child,
        channel,
        pid,
    } = spawned;
    {
        let mut s = state.borrow_mut();
        s.pid = Some(pid);
        s.started_at = Some(Instant::now());
        s.phase = Phase::Starting;
    }
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let sent = match role {
        Role::Tcp(worker) => {
            let live = inputs.live.borrow().clone();
            let init = ToTcp::Init(Box::new(TcpInit {
                protocol: WORKER_PROTOCOL_VERSION,
                instance: ctx.instance.clone(),
                worker,
                stats_interval_ms: spec.stats_interval_ms,
                config: tcp_config(&spec, &live, borrowed.len()),
            }));
            channel.send_with(&init, &ToTcp::MoreFds, &borrowed).await
        }
        Role::Metrics => {
            let init = ToMetrics::Init {
                protocol: WORKER_PROTOCOL_VERSION,
                instance: ctx.instance.clone(),
                max_connections: ctx.metrics_connections,
                allow: ctx.metrics_allow.clone(),
            };
            channel
                .send_with(&init, &ToMetrics::Shutdown, &borrowed)
                .await
        }
    };
    // The worker holds them now; copies here would keep a dead worker's
    // listener in the SO_REUSEPORT group, and show the loader listening.
    drop(borrowed);
    drop(fds);
    if let Err(e) = sent {
        kill(&mut child).await;
        return Some(format!("sending the configuration: {e}"));
    }

    let heartbeat =
        |s: &TcpSpec| Duration::from_millis(u64::from(s.supervisor.heartbeat_timeout_ms));
    let mut last_heard = Instant::now();
    let started = Instant::now();
    let mut ready = false;
    let mut window = (Instant::now(), 0u32);
    let mut tick = tokio::time::interval(TICK);
    let uid = ctx.template.uid();
    loop {
        tokio::select! {
            msg = recv(role, &channel) => {
                let incoming = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        let status = tokio::time::timeout(STOP_TIMEOUT, child.wait()).await;
                        return Some(match status {
                            Ok(s) => describe(&s),
                            Err(_) => {
                                kill(&mut child).await;
                                "closed its channel and hung: killed".into()
                            }
                        });
                    }
                    Err(e) => {
                        kill(&mut child).await;
                        return Some(format!("control channel: {e}"));
                    }
                };
                last_heard = Instant::now();
                if window.0.elapsed() >= Duration::from_secs(1) {
                    window = (Instant::now(), 0);
                }
                window.1 += 1;
                let verdict = if window.1 > MAX_MESSAGES_PER_SECOND {
                    Err(format!("more than {MAX_MESSAGES_PER_SECOND} messages a second: killed"))
                } else {
                    handle(role, incoming, pid, uid, &spec, state, &mut ready)
                };
                if let Err(reason) = verdict {
                    kill(&mut child).await;
                    return Some(reason);
                }
            }
            status = child.wait() => return Some(describe(&status)),
            _ = tick.tick() => {
                if !ready && started.elapsed() > READY_TIMEOUT {
                    kill(&mut child).await;
                    return Some(format!("not ready within {READY_TIMEOUT:?}"));
                }
                if ready && last_heard.elapsed() > heartbeat(&spec) {
                    let silent = last_heard.elapsed().as_millis();
                    kill(&mut child).await;
                    return Some(format!("silent for {silent} ms: killed"));
                }
            }
            changed = inputs.spec.changed() => {
                if changed.is_err() {
                    stop(role, &mut child, &channel).await;
                    return None;
                }
                let new = inputs.spec.borrow_and_update().clone();
                if role != Role::Metrics && new.reconfigures(&spec) {
                    let fds = match sockets_for(role, ctx, &new, false) {
                        Ok(f) => f,
                        Err(e) => {
                            warn!(worker = %role.name(), error = %e, "reload: cannot bind the new listeners; the worker keeps the old ones");
                            spec = new;
                            continue;
                        }
                    };
                    let live = inputs.live.borrow().clone();
                    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                    let msg = ToTcp::Reconfigure(Box::new(tcp_config(&new, &live, borrowed.len())));
                    if let Err(e) = channel.send_with(&msg, &ToTcp::MoreFds, &borrowed).await {
                        kill(&mut child).await;
                        return Some(format!("sending the new configuration: {e}"));
                    }
                }
                spec = new;
            }
            changed = inputs.live.changed(), if matches!(role, Role::Tcp(_)) => {
                if changed.is_ok() {
                    let live = inputs.live.borrow_and_update().as_ref().clone();
                    if let Err(e) = channel.send_with(&ToTcp::Backends(live), &ToTcp::MoreFds, &[]).await {
                        kill(&mut child).await;
                        return Some(format!("control channel: {e}"));
                    }
                }
            }
            changed = inputs.snapshot.changed(), if role == Role::Metrics && ready => {
                if changed.is_ok() {
                    let snap = inputs.snapshot.borrow_and_update().clone();
                    if let Some(fd) = snap
                        && let Err(e) = channel
                            .send_with(&ToMetrics::Snapshot, &ToMetrics::Shutdown, &[fd.as_fd()])
                            .await
                    {
                        kill(&mut child).await;
                        return Some(format!("control channel: {e}"));
                    }
                }
            }
            _ = inputs.stop.changed() => {
                stop(role, &mut child, &channel).await;
                return None;
            }
        }
    }
}

/// A message of the role's type.
enum Message {
    Tcp(Incoming<FromTcp>),
    Metrics(Incoming<FromMetrics>),
}

async fn recv(
    role: Role,
    channel: &Channel,
) -> Result<Option<Message>, super::channel::ChannelError> {
    Ok(match role {
        Role::Tcp(_) => channel.recv_as::<FromTcp>().await?.map(Message::Tcp),
        Role::Metrics => channel
            .recv_as::<FromMetrics>()
            .await?
            .map(Message::Metrics),
    })
}

/// Acts on one message; an error means the worker misbehaved.
fn handle(
    role: Role,
    incoming: Message,
    pid: u32,
    uid: u32,
    spec: &TcpSpec,
    state: &Rc<RefCell<ServiceState>>,
    ready: &mut bool,
) -> Result<(), String> {
    let (fds, creds) = match &incoming {
        Message::Tcp(m) => (m.fds.len(), m.creds),
        Message::Metrics(m) => (m.fds.len(), m.creds),
    };
    if fds > 0 {
        return Err("a worker sent descriptors".into());
    }
    let mut check_ready = |protocol: u32| -> Result<(), String> {
        let (peer_pid, peer_uid, _) = creds.ok_or("Ready without credentials")?;
        if peer_pid as u32 != pid || peer_uid != uid {
            return Err(format!(
                "Ready from pid {peer_pid} uid {peer_uid}, expected our child {pid} uid {uid}"
            ));
        }
        if protocol != WORKER_PROTOCOL_VERSION {
            return Err(format!(
                "worker speaks protocol {protocol}, we {WORKER_PROTOCOL_VERSION}"
            ));
        }
        if *ready {
            return Err("a second Ready".into());
        }
        *ready = true;
        let mut s = state.borrow_mut();
        s.phase = Phase::Running;
        info!(worker = %role.name(), pid, "serving");
        Ok(())
    };
    match incoming {
        Message::Tcp(m) => match m.msg {
            FromTcp::Ready { protocol } => check_ready(protocol),
            FromTcp::Stats(c) => {
                plausible(&c, spec)?;
                state.borrow_mut().tcp_live = *c;
                Ok(())
            }
            FromTcp::Failed(f) => Err(format!("setup failed: {}: {}", f.stage, f.error)),
        },
        Message::Metrics(m) => match m.msg {
            FromMetrics::Ready { protocol } => check_ready(protocol),
            FromMetrics::Stats(c) => {
                state.borrow_mut().metrics_live = c;
                Ok(())
            }
            FromMetrics::Failed(f) => Err(format!("setup failed: {}: {}", f.stage, f.error)),
        },
    }
}

/// Counters a TCP worker can have sent: vectors sized as the
/// configuration sizes them.
fn plausible(c: &TcpCounters, spec: &TcpSpec) -> Result<(), String> {
    let rules = spec.answer.rules.len() + 1;
    let backends = spec.forward.as_ref().map_or(0, |f| f.backends.len());
    let bad = c.queries.dropped.len() > DropReason::COUNT
        || c.pipeline.rule_hits.len() > rules
        || c.pipeline.backends.len() > backends
        || c.pipeline.backends.iter().any(|b| b.latency.len() > 64)
        || c.pipeline.xsk.dropped.len() > DropReason::COUNT
        || c.pipeline.kernel.dropped.len() > DropReason::COUNT
        || c.open > u64::from(spec.limits.max_connections);
    if bad {
        return Err("counters of an impossible shape: killed".into());
    }
    Ok(())
}

/// Kills within a bound; a worker that cannot be killed is reported there.
async fn kill(child: &mut WorkerProcess) {
    child.kill_within(KILL_TIMEOUT).await;
}

async fn stop(role: Role, child: &mut WorkerProcess, channel: &Channel) {
    let _ = match role {
        Role::Tcp(_) => {
            channel
                .send_with(&ToTcp::Shutdown, &ToTcp::MoreFds, &[])
                .await
        }
        Role::Metrics => {
            channel
                .send_with(&ToMetrics::Shutdown, &ToMetrics::Shutdown, &[])
                .await
        }
    };
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        warn!(worker = %role.name(), "did not stop in time; killing it");
        kill(child).await;
    }
}

/// The workers and their states: what the run loop owns.
pub struct Services {
    pub states: Vec<Rc<RefCell<ServiceState>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Services {
    /// Starts `tcp_workers` TCP workers, and the exporter if `metrics`.
    pub fn start(
        tcp: Rc<ServiceContext>,
        tcp_workers: u32,
        metrics: Option<Rc<ServiceContext>>,
        inputs: impl Fn() -> Inputs,
    ) -> Services {
        let mut states = Vec::new();
        let mut tasks = Vec::new();
        let mut add = |role: Role, ctx: Rc<ServiceContext>| {
            let state = Rc::new(RefCell::new(ServiceState::new(role)));
            states.push(state.clone());
            tasks.push(tokio::task::spawn_local(supervise(
                role,
                ctx,
                state,
                inputs(),
            )));
        };
        for i in 0..tcp_workers {
            add(Role::Tcp(i), tcp.clone());
        }
        if let Some(m) = metrics {
            add(Role::Metrics, m);
        }
        Services { states, tasks }
    }

    /// Rule hits of the TCP workers follow their rule after a reload.
    pub fn remap_rule_hits(&self, map: &[Option<usize>]) {
        for s in &self.states {
            let mut s = s.borrow_mut();
            if matches!(s.role, Role::Tcp(_)) {
                s.tcp_base.pipeline.remap_rule_hits(map);
                s.tcp_live.pipeline.remap_rule_hits(map);
            }
        }
    }

    /// TCP counters summed over workers and their lives.
    pub fn tcp_totals(&self) -> TcpCounters {
        let mut t = TcpCounters::new();
        for s in &self.states {
            let s = s.borrow();
            if matches!(s.role, Role::Tcp(_)) {
                t.accumulate(&s.tcp_totals());
            }
        }
        t
    }

    /// The exporter's counters over its lives, if there is one.
    pub fn exporter(&self) -> Option<MetricsCounters> {
        self.states
            .iter()
            .map(|s| s.borrow())
            .find(|s| s.role == Role::Metrics)
            .map(|s| s.metrics_totals())
    }

    /// Waits for every supervisor to finish (after stop was signalled).
    pub async fn join(&mut self) {
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}
