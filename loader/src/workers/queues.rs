//! The queues and their supervisors: one [`Queues`] owned by the run loop,
//! holding each queue's state as its supervisor reports it, and the
//! supervisors' command channels.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use xdpdns_common::ipc::BackendLive;
use xdpdns_common::stats::DataplaneCounters;

use super::DataplaneSpec;
use super::supervisor::{self, Channels, Context, Phase, QueueCommand, QueueEvent};
use crate::bpf::XskSlot;

/// What the run loop knows about one queue.
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
    /// Dataplanes that did not die when killed.
    pub unkillable: u32,
}

impl QueueState {
    pub fn new() -> Self {
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
            unkillable: 0,
        }
    }

    /// Updates the state with one report of the queue's supervisor.
    pub fn apply(&mut self, ev: QueueEvent) -> Notice {
        let queue = ev.queue();
        match ev {
            QueueEvent::Started { pid, .. } => {
                self.pid = Some(pid);
                self.started_at = Some(Instant::now());
                self.registered_at = None;
                self.live = DataplaneCounters::new();
                Notice::None
            }
            QueueEvent::Registered { zero_copy, .. } => {
                self.registered_at = Some(Instant::now());
                self.zero_copy = Some(zero_copy);
                Notice::Registered(queue)
            }
            QueueEvent::Stats { counters, .. } => {
                self.live = *counters;
                self.last_report = Some(Instant::now());
                Notice::None
            }
            QueueEvent::SetupFailed { reason, .. } => {
                self.last_exit = Some(reason.clone());
                Notice::SetupFailed(queue, reason)
            }
            QueueEvent::Exited {
                reason, requested, ..
            } => {
                // The dataplane is gone: fold its counters into the base.
                let live = std::mem::take(&mut self.live);
                self.base.accumulate(&live);
                self.live = DataplaneCounters::new();
                self.pid = None;
                self.registered_at = None;
                self.restarts += 1;
                if !requested {
                    self.last_exit = Some(reason);
                }
                Notice::Unregistered(queue)
            }
            QueueEvent::Phase { phase, .. } => {
                self.phase = phase;
                Notice::None
            }
            QueueEvent::Unkillable { pid, .. } => {
                self.unkillable = self.unkillable.saturating_add(1);
                self.last_exit = Some(format!("pid {pid} could not be killed"));
                Notice::None
            }
            QueueEvent::Clients { counts, .. } => Notice::Clients(counts),
        }
    }

    /// Monotonic totals over all of this queue's dataplanes.
    pub fn totals(&self) -> DataplaneCounters {
        let mut t = self.base.clone();
        t.accumulate(&self.live);
        t
    }
}

/// What an event means for the run loop beyond the queue's own state.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    None,
    Registered(u32),
    Unregistered(u32),
    SetupFailed(u32, String),
    /// Answers per client prefix, for the dynamic block rules.
    Clients(Vec<xdpdns_common::ipc::ClientCount>),
}

struct Handle {
    commands: mpsc::UnboundedSender<QueueCommand>,
    task: JoinHandle<()>,
}

/// The supervised queues.
pub struct Queues {
    ctx: Rc<Context>,
    spec: watch::Receiver<Arc<DataplaneSpec>>,
    live: watch::Receiver<Arc<Vec<BackendLive>>>,
    stop: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<QueueEvent>,
    states: BTreeMap<u32, QueueState>,
    handles: BTreeMap<u32, Handle>,
}

impl Queues {
    pub fn new(
        ctx: Context,
        spec: watch::Receiver<Arc<DataplaneSpec>>,
        live: watch::Receiver<Arc<Vec<BackendLive>>>,
        stop: watch::Receiver<bool>,
        events: mpsc::UnboundedSender<QueueEvent>,
    ) -> Queues {
        Queues {
            ctx: Rc::new(ctx),
            spec,
            live,
            stop,
            events,
            states: BTreeMap::new(),
            handles: BTreeMap::new(),
        }
    }

    /// Starts supervising `queue`, whose XSKMAP slot is `slot`.
    pub fn start(&mut self, queue: u32, slot: XskSlot) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ch = Channels {
            spec: self.spec.clone(),
            live: self.live.clone(),
            commands: rx,
            events: self.events.clone(),
            stop: self.stop.clone(),
        };
        let task =
            tokio::task::spawn_local(supervisor::supervise(queue, self.ctx.clone(), slot, ch));
        self.states.entry(queue).or_insert_with(QueueState::new);
        self.handles.insert(queue, Handle { commands: tx, task });
    }

    /// Stops `queue`'s dataplane and forgets the queue (a reload removed it).
    pub fn remove(&mut self, queue: u32) {
        if let Some(h) = self.handles.remove(&queue) {
            let _ = h.commands.send(QueueCommand::Stop);
        }
        self.states.remove(&queue);
    }

    /// Sends a command to a queue's supervisor; false if there is none.
    pub fn command(&self, queue: u32, cmd: QueueCommand) -> bool {
        self.handles
            .get(&queue)
            .is_some_and(|h| h.commands.send(cmd).is_ok())
    }

    pub fn supervised(&self) -> Vec<u32> {
        self.handles.keys().copied().collect()
    }

    pub fn states(&self) -> &BTreeMap<u32, QueueState> {
        &self.states
    }

    /// Records what a supervisor reported.
    pub fn on_event(&mut self, ev: QueueEvent) -> Notice {
        let queue = ev.queue();
        // Reports of a queue removed meanwhile are dropped.
        if !self.handles.contains_key(&queue) {
            return Notice::None;
        }
        self.states
            .entry(queue)
            .or_insert_with(QueueState::new)
            .apply(ev)
    }

    /// Rule hits follow their rule when the rule list changes.
    pub fn remap_rule_hits(&mut self, map: &[Option<usize>]) {
        for q in self.states.values_mut() {
            q.base.remap_rule_hits(map);
            q.live.remap_rule_hits(map);
        }
    }

    /// Per-backend counters follow their backend to its new index.
    pub fn remap_backends(&mut self, map: &[Option<usize>]) {
        for q in self.states.values_mut() {
            q.base.remap_backends(map);
            q.live.remap_backends(map);
        }
    }

    /// Sum of every queue's totals.
    pub fn totals(&self) -> DataplaneCounters {
        let mut t = DataplaneCounters::new();
        for q in self.states.values() {
            t.accumulate(&q.totals());
        }
        t
    }

    /// Waits for every supervisor to stop its dataplane (after `stop` fired).
    pub async fn join(&mut self) {
        for (_, h) in std::mem::take(&mut self.handles) {
            let _ = h.task.await;
        }
    }
}

#[cfg(test)]
mod tests;
