//! The running instance's shared state: the plan, the attached program, and
//! each queue's supervisor view. Single-threaded (the loader's runtime is),
//! hence `RefCell`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use xdpdns_common::config::{AnswerSpec, Config};
use xdpdns_common::stats::DataplaneCounters;

use crate::bpf::{Attached, BpfError, XdpCounters};
use crate::dataplane::spawn::Template;
use crate::plan::Plan;

/// Where a queue's dataplane is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Starting,
    Running,
    BackingOff,
    /// Past its restart budget: served by the kernel path until `restart-queue`.
    KernelOnly,
    Stopped,
}

/// What the supervisor knows about one queue.
#[derive(Debug, Clone)]
pub struct QueueState {
    pub phase: Phase,
    pub pid: Option<u32>,
    pub started_at: Option<Instant>,
    pub registered_at: Option<Instant>,
    pub restarts: u32,
    pub zero_copy: Option<bool>,
    /// Counters of this queue's earlier dataplanes.
    pub base: DataplaneCounters,
    /// Counters of the current dataplane, as last reported.
    pub live: DataplaneCounters,
    pub last_report: Option<Instant>,
    pub last_exit: Option<String>,
}

impl QueueState {
    fn new() -> Self {
        QueueState {
            phase: Phase::Starting,
            pid: None,
            started_at: None,
            registered_at: None,
            restarts: 0,
            zero_copy: None,
            base: DataplaneCounters::new(),
            live: DataplaneCounters::new(),
            last_report: None,
            last_exit: None,
        }
    }

    pub fn start(&mut self, pid: u32) {
        self.phase = Phase::Starting;
        self.pid = Some(pid);
        self.started_at = Some(Instant::now());
        self.registered_at = None;
        self.live = DataplaneCounters::new();
    }

    pub fn ready(&mut self, zero_copy: bool) {
        self.phase = Phase::Running;
        self.registered_at = Some(Instant::now());
        self.zero_copy = Some(zero_copy);
    }

    /// The dataplane is gone: fold its counters into the base.
    pub fn retire(&mut self) {
        self.base.accumulate(&self.live);
        self.live = DataplaneCounters::new();
        self.pid = None;
        self.registered_at = None;
    }

    /// Monotonic totals over all of this queue's dataplanes.
    pub fn totals(&self) -> DataplaneCounters {
        let mut t = self.base.clone();
        t.accumulate(&self.live);
        t
    }
}

/// Everything the XDP program redirects under `config` with `forwarding`.
pub fn destinations_with(
    config: &Config,
    forwarding: Option<&crate::backends::Forwarding>,
) -> Vec<SocketAddr> {
    let mut d = config.redirected();
    if config.xdp.redirect
        && let Some(f) = forwarding
    {
        d.extend(f.destinations());
    }
    d
}

/// Indices of pools with members, all down.
fn pools_down(
    f: Option<&crate::backends::Forwarding>,
    live: &[xdpdns_common::ipc::BackendLive],
) -> Vec<usize> {
    let Some(f) = f else {
        return Vec::new();
    };
    f.spec()
        .pools
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            !p.members.is_empty() && p.members.iter().all(|m| !live[usize::from(*m)].up)
        })
        .map(|(i, _)| i)
        .collect()
}

/// What the loader can ask a queue's supervisor to do.
#[derive(Debug)]
pub enum QueueCommand {
    /// Replace the dataplane now (graceful stop, immediate start; resets the budget).
    Restart,
    /// Push the current rules and listen addresses to the dataplane.
    Reconfigure,
    /// Push backend health and MACs to the dataplane.
    Backends,
    /// Stop the dataplane and end supervision (the queue was removed).
    Stop,
}

/// Things supervisors tell the main task.
#[derive(Debug)]
pub enum Event {
    Registered(u32),
    SetupFailed(u32, String),
    Exited(u32),
}

/// A running supervisor task and its command channel.
pub struct SupervisorHandle {
    pub commands: mpsc::UnboundedSender<QueueCommand>,
    pub task: JoinHandle<()>,
}

pub struct Shared {
    /// The plan the instance started with: its fixed parts (interface,
    /// pins, UMEM geometry, user) never change while it runs.
    pub plan: Plan,
    pub template: Template,
    pub started_at: Instant,
    /// Set to true once, at shutdown.
    pub stop: watch::Receiver<bool>,
    /// The configuration in force (changes with reloads) and where it came from.
    config: RefCell<Config>,
    config_path: RefCell<std::path::PathBuf>,
    program: RefCell<Option<Attached>>,
    queues: RefCell<BTreeMap<u32, QueueState>>,
    supervisors: RefCell<BTreeMap<u32, SupervisorHandle>>,
    listen: RefCell<Vec<SocketAddr>>,
    answer: RefCell<AnswerSpec>,
    events: mpsc::UnboundedSender<Event>,
    /// Backends and what forwarding needs, if any backend is configured
    /// (replaced by a reload that changes backends, pools or timeouts).
    forwarding: RefCell<Option<Rc<crate::backends::Forwarding>>>,
    backend_live: RefCell<Vec<xdpdns_common::ipc::BackendLive>>,
    /// One health-check task per backend.
    health: RefCell<Vec<JoinHandle<()>>>,
    pub tcp: crate::tcp::TcpCounters,
    tcp_next: std::cell::Cell<usize>,
}

impl Shared {
    pub fn new(
        plan: Plan,
        config_path: std::path::PathBuf,
        template: Template,
        program: Attached,
        events: mpsc::UnboundedSender<Event>,
        stop: watch::Receiver<bool>,
        forwarding: Option<crate::backends::Forwarding>,
    ) -> Self {
        let queues = plan
            .queues
            .iter()
            .map(|q| (*q, QueueState::new()))
            .collect();
        let listen = plan.config.listen.iter().map(|l| l.address).collect();
        let answer = plan.config.answer_spec();
        Shared {
            config: RefCell::new(plan.config.clone()),
            config_path: RefCell::new(config_path),
            plan,
            template,
            started_at: Instant::now(),
            stop,
            program: RefCell::new(Some(program)),
            queues: RefCell::new(queues),
            supervisors: RefCell::new(BTreeMap::new()),
            listen: RefCell::new(listen),
            answer: RefCell::new(answer),
            events,
            backend_live: RefCell::new(
                forwarding
                    .as_ref()
                    .map(|f| f.spec().live.clone())
                    .unwrap_or_default(),
            ),
            forwarding: RefCell::new(forwarding.map(Rc::new)),
            health: RefCell::new(Vec::new()),
            tcp: crate::tcp::TcpCounters::default(),
            tcp_next: std::cell::Cell::new(0),
        }
    }

    /// Forwarding in force, if backends are configured.
    pub fn forwarding(&self) -> Option<Rc<crate::backends::Forwarding>> {
        self.forwarding.borrow().clone()
    }

    /// Installs reloaded forwarding: backend health and the queues' counter
    /// history follow their backend to its new index. The caller pushes it
    /// to the dataplanes and restarts the health checks.
    pub fn set_forwarding(&self, r: crate::backends::Reloaded) {
        *self.backend_live.borrow_mut() = r.forwarding.spec().live.clone();
        for q in self.queues.borrow_mut().values_mut() {
            q.base.remap_backends(&r.map);
            q.live.remap_backends(&r.map);
        }
        *self.forwarding.borrow_mut() = Some(Rc::new(r.forwarding));
    }

    /// (Re)starts one health-check task per backend, stopping the old ones.
    pub fn restart_health(self: &Rc<Self>) {
        let mut tasks = self.health.borrow_mut();
        for t in tasks.drain(..) {
            t.abort();
        }
        let n = self.forwarding().map_or(0, |f| f.spec().backends.len());
        for i in 0..n {
            tasks.push(tokio::task::spawn_local(crate::backends::run_health(
                i,
                self.clone(),
            )));
        }
    }

    /// Stops the health checks (shutdown).
    pub fn stop_health(&self) {
        for t in self.health.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// A backend of the default pool for a TCP connection: the next up one.
    pub fn tcp_backend(&self) -> Option<SocketAddr> {
        let f = self.forwarding()?;
        let members = &f.spec().pools.first()?.members;
        let live = self.backend_live.borrow();
        let n = members.len();
        for i in 0..n {
            let pos = (self.tcp_next.get() + i) % n;
            let b = usize::from(members[pos]);
            if live.get(b).is_some_and(|l| l.up) {
                self.tcp_next.set(pos + 1);
                return Some(f.spec().backends[b].address);
            }
        }
        None
    }

    /// Our source address toward backend `i`.
    pub fn backend_source(&self, i: usize) -> Option<std::net::IpAddr> {
        self.forwarding()?.spec().backends.get(i).map(|b| b.source)
    }

    pub fn backend_live(&self) -> Vec<xdpdns_common::ipc::BackendLive> {
        self.backend_live.borrow().clone()
    }

    /// Records backend `i`'s health and MAC; on a change, tells every
    /// dataplane and logs when a whole pool goes down or comes back.
    pub fn set_backend_live(&self, i: usize, live: xdpdns_common::ipc::BackendLive) {
        let (before, after) = {
            let mut all = self.backend_live.borrow_mut();
            if all.get(i).is_none_or(|l| *l == live) {
                return;
            }
            let f = self.forwarding();
            let before = pools_down(f.as_deref(), &all);
            all[i] = live;
            (before, pools_down(f.as_deref(), &all))
        };
        for q in self.supervised_queues() {
            self.command(q, QueueCommand::Backends);
        }
        if let Some(f) = self.forwarding() {
            for (p, pool) in f.spec().pools.iter().enumerate() {
                if !before.contains(&p) && after.contains(&p) {
                    tracing::error!(pool = %pool.name, action = ?f.spec().all_down_action, "every backend of the pool is down");
                } else if before.contains(&p) && !after.contains(&p) {
                    tracing::info!(pool = %pool.name, "the pool has a backend up again");
                }
            }
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config.borrow().clone()
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.config_path.borrow().clone()
    }

    /// Installs a reloaded configuration (already applied to maps and queues).
    pub fn set_config(&self, config: Config, path: std::path::PathBuf) {
        *self.listen.borrow_mut() = config.listen.iter().map(|l| l.address).collect();
        *self.answer.borrow_mut() = config.answer_spec();
        *self.config.borrow_mut() = config;
        *self.config_path.borrow_mut() = path;
    }

    pub fn set_destinations(&self, listen: &[SocketAddr]) -> Result<(), BpfError> {
        match self.program.borrow_mut().as_mut() {
            Some(p) => p.set_destinations(listen),
            None => Ok(()),
        }
    }

    pub fn add_supervisor(&self, queue: u32, handle: SupervisorHandle) {
        self.supervisors.borrow_mut().insert(queue, handle);
    }

    /// Sends a command to a queue's supervisor; false if there is none.
    pub fn command(&self, queue: u32, cmd: QueueCommand) -> bool {
        self.supervisors
            .borrow()
            .get(&queue)
            .is_some_and(|h| h.commands.send(cmd).is_ok())
    }

    pub fn supervised_queues(&self) -> Vec<u32> {
        self.supervisors.borrow().keys().copied().collect()
    }

    /// Removes and returns every supervisor (for shutdown).
    pub fn take_supervisors(&self) -> Vec<SupervisorHandle> {
        std::mem::take(&mut *self.supervisors.borrow_mut())
            .into_values()
            .collect()
    }

    /// Removes one queue's supervisor handle and state (queue removed by a reload).
    pub fn forget_queue(&self, queue: u32) -> Option<SupervisorHandle> {
        self.queues.borrow_mut().remove(&queue);
        self.supervisors.borrow_mut().remove(&queue)
    }

    /// Rule hits restart from zero when the rule list changes.
    pub fn reset_rule_hits(&self) {
        for q in self.queues.borrow_mut().values_mut() {
            q.base.rule_hits.clear();
            q.live.rule_hits.clear();
        }
    }

    pub fn with_queue<R>(&self, queue: u32, f: impl FnOnce(&mut QueueState) -> R) -> R {
        let mut queues = self.queues.borrow_mut();
        f(queues.entry(queue).or_insert_with(QueueState::new))
    }

    pub fn queues(&self) -> BTreeMap<u32, QueueState> {
        self.queues.borrow().clone()
    }

    pub fn listen(&self) -> Vec<SocketAddr> {
        self.listen.borrow().clone()
    }

    pub fn answer_spec(&self) -> AnswerSpec {
        self.answer.borrow().clone()
    }

    pub fn notify(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub fn register(&self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), BpfError> {
        match self.program.borrow_mut().as_mut() {
            Some(p) => p.register(queue, socket),
            None => Ok(()),
        }
    }

    pub fn xdp_counters(&self) -> XdpCounters {
        self.program
            .borrow()
            .as_ref()
            .map(|p| p.counters())
            .unwrap_or_default()
    }

    pub fn program_info(&self) -> Option<(u32, Option<&'static str>, String)> {
        self.program.borrow().as_ref().map(|p| {
            (
                p.prog_id,
                p.mode.map(|m| m.name()),
                p.pin_dir().display().to_string(),
            )
        })
    }

    /// Takes the program out for detaching at shutdown.
    pub fn take_program(&self) -> Option<Attached> {
        self.program.borrow_mut().take()
    }

    /// Sum of every queue's totals.
    pub fn totals(&self) -> DataplaneCounters {
        let mut t = DataplaneCounters::new();
        for q in self.queues.borrow().values() {
            t.accumulate(&q.totals());
        }
        t
    }
}
