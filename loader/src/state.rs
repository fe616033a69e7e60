//! The running instance's shared state: the plan, the attached program, and
//! each queue's supervisor view. Single-threaded (the loader's runtime is),
//! hence `RefCell`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use tokio::sync::mpsc;
use xdpdns_common::config::AnswerSpec;
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

/// Things supervisors tell the main task.
#[derive(Debug)]
pub enum Event {
    Registered(u32),
    SetupFailed(u32, String),
    Exited(u32),
}

pub struct Shared {
    pub plan: Plan,
    pub template: Template,
    pub started_at: Instant,
    program: RefCell<Option<Attached>>,
    queues: RefCell<BTreeMap<u32, QueueState>>,
    listen: RefCell<Vec<SocketAddr>>,
    answer: RefCell<AnswerSpec>,
    events: mpsc::UnboundedSender<Event>,
}

impl Shared {
    pub fn new(
        plan: Plan,
        template: Template,
        program: Attached,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        let queues = plan
            .queues
            .iter()
            .map(|q| (*q, QueueState::new()))
            .collect();
        let listen = plan.config.listen.iter().map(|l| l.address).collect();
        let answer = plan.config.answer_spec();
        Shared {
            plan,
            template,
            started_at: Instant::now(),
            program: RefCell::new(Some(program)),
            queues: RefCell::new(queues),
            listen: RefCell::new(listen),
            answer: RefCell::new(answer),
            events,
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
