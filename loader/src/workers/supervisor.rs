//! One supervisor task per queue: start the dataplane, put its AF_XDP socket
//! in the queue's XSKMAP slot, relay its counters, push configuration
//! changes to it, and restart it — with back-off when it dies, at once when
//! asked — until told to stop. A dataplane that stops reporting is evicted;
//! a queue that keeps failing is left on the kernel path. Everything the
//! task learns goes to the run loop as a [`QueueEvent`]; everything it needs
//! comes from its [`Context`] and channels.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use xdpdns_common::config::XskBindMode;
use xdpdns_common::ipc::{
    BackendLive, DataplaneInit, ForwardSpec, FromDataplane, PROTOCOL_VERSION, Reconfigure,
    ToDataplane,
};
use xdpdns_common::stats::DataplaneCounters;

use super::DataplaneSpec;
use super::backoff::Backoff;
use super::channel::{Channel, Incoming};
use super::checks;
use super::process::{WorkerProcess, describe};
use super::spawn::{self, Spawned, Template};
use crate::bpf::XskSlot;
use crate::forwarding::ForwardResources;
use crate::sockets;

/// How long a new dataplane has to hand over its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dataplane has to exit after Shutdown before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a killed worker has to be gone before it is reported as
/// unkillable.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the heartbeat is checked.
const HEARTBEAT_TICK: Duration = Duration::from_millis(100);

/// What does not change while the instance runs.
pub struct Context {
    pub template: Template,
    pub instance: String,
    pub ifname: String,
    pub ifindex: u32,
    pub frames: u32,
    pub frame_size: u32,
    pub bind_mode: XskBindMode,
    pub forward: Option<Rc<ForwardResources>>,
}

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

/// What the run loop can ask a supervisor to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCommand {
    /// Replace the dataplane now (graceful stop, immediate start; resets the budget).
    Restart,
    /// Have the running dataplane remove these packet cache entries (the
    /// cache is shared: one dataplane does it for all); ignored while none
    /// runs.
    PurgeCache(xdpdns_common::ipc::CachePurge),
    /// Stop the dataplane and end supervision (the queue was removed).
    Stop,
}

/// What a supervisor tells the run loop.
#[derive(Debug)]
pub enum QueueEvent {
    Started {
        queue: u32,
        pid: u32,
    },
    Registered {
        queue: u32,
        zero_copy: bool,
    },
    Stats {
        queue: u32,
        counters: Box<DataplaneCounters>,
    },
    /// The dataplane reported why it could not set up (it exits next).
    SetupFailed {
        queue: u32,
        reason: String,
    },
    /// The dataplane is gone; `requested` if it was replaced on request.
    Exited {
        queue: u32,
        reason: String,
        requested: bool,
    },
    Phase {
        queue: u32,
        phase: Phase,
    },
    /// A dataplane that was killed did not die within the bound: its queue
    /// stays on the kernel path until `restart-queue`.
    Unkillable {
        queue: u32,
        pid: u32,
    },
    /// Answers per client prefix since the dataplane's last report
    /// (validated: see `checks::client_counts`).
    Clients {
        queue: u32,
        counts: Vec<xdpdns_common::ipc::ClientCount>,
    },
}

impl QueueEvent {
    pub fn queue(&self) -> u32 {
        match self {
            QueueEvent::Started { queue, .. }
            | QueueEvent::Registered { queue, .. }
            | QueueEvent::Stats { queue, .. }
            | QueueEvent::SetupFailed { queue, .. }
            | QueueEvent::Exited { queue, .. }
            | QueueEvent::Phase { queue, .. }
            | QueueEvent::Unkillable { queue, .. }
            | QueueEvent::Clients { queue, .. } => *queue,
        }
    }
}

/// The channels of one supervisor.
pub struct Channels {
    pub spec: watch::Receiver<Arc<DataplaneSpec>>,
    pub live: watch::Receiver<Arc<Vec<BackendLive>>>,
    pub commands: mpsc::UnboundedReceiver<QueueCommand>,
    pub events: mpsc::UnboundedSender<QueueEvent>,
    pub stop: watch::Receiver<bool>,
}

/// What the supervisor knows of the current dataplane life.
struct Life {
    born: Instant,
    registered: bool,
    /// Its last counters (they may only grow).
    last: DataplaneCounters,
    rate: checks::RateLimit,
}

/// How one dataplane run ended.
enum Outcome {
    /// Shutdown, or the queue was removed.
    Stopped,
    /// Replaced on request: start again at once, outside the budget.
    Restart,
    /// It died, hung or misbehaved; the reason is for the log.
    Exited(String),
}

struct Supervisor {
    queue: u32,
    ctx: Rc<Context>,
    slot: XskSlot,
    ch: Channels,
    /// The last dataplane killed did not die: no new one until an operator asks.
    stuck: bool,
}

/// Supervises `queue` until told to stop.
pub async fn supervise(queue: u32, ctx: Rc<Context>, slot: XskSlot, ch: Channels) {
    let mut s = Supervisor {
        queue,
        ctx,
        slot,
        ch,
        stuck: false,
    };
    s.run().await;
    s.phase(Phase::Stopped);
}

impl Supervisor {
    fn emit(&self, ev: QueueEvent) {
        let _ = self.ch.events.send(ev);
    }

    fn phase(&self, phase: Phase) {
        self.emit(QueueEvent::Phase {
            queue: self.queue,
            phase,
        });
    }

    async fn run(&mut self) {
        let queue = self.queue;
        let mut backoff = Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        let mut recent: VecDeque<Instant> = VecDeque::new();
        loop {
            if *self.ch.stop.borrow() {
                return;
            }
            let started = Instant::now();
            let outcome = self.run_once().await;
            let (reason, requested) = match outcome {
                Outcome::Stopped => return,
                Outcome::Restart => ("replaced on request".to_string(), true),
                Outcome::Exited(reason) => (reason, false),
            };
            self.emit(QueueEvent::Exited {
                queue,
                reason: reason.clone(),
                requested,
            });
            if requested && !self.stuck {
                recent.clear();
                continue;
            }
            if std::mem::take(&mut self.stuck) {
                error!(
                    queue,
                    %reason,
                    "the dataplane could not be killed: the queue stays on the kernel path until `xdpdns restart-queue`"
                );
                self.phase(Phase::KernelOnly);
                if !self.await_restart().await {
                    return;
                }
                recent.clear();
                continue;
            }

            let sup = self.ch.spec.borrow().supervisor.clone();
            let window = Duration::from_secs(u64::from(sup.restart_window_s));
            recent.push_back(Instant::now());
            while recent.front().is_some_and(|t| t.elapsed() > window) {
                recent.pop_front();
            }
            if recent.len() > sup.max_restarts as usize {
                error!(
                    queue,
                    %reason,
                    restarts = recent.len(),
                    window_s = sup.restart_window_s,
                    "restart budget exhausted: the queue stays on the kernel path until `xdpdns restart-queue`"
                );
                self.phase(Phase::KernelOnly);
                // Wait for an operator's restart-queue, a removal or shutdown.
                if !self.await_restart().await {
                    return;
                }
                recent.clear();
                continue;
            }
            let delay = backoff.next(started.elapsed());
            warn!(
                queue,
                %reason,
                restart_in_ms = delay.as_millis() as u64,
                "dataplane exited; the queue takes the kernel path until it is back"
            );
            self.phase(Phase::BackingOff);
            let wake = tokio::time::sleep(delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    _ = self.ch.stop.changed() => return,
                    cmd = self.ch.commands.recv() => match cmd {
                        Some(QueueCommand::Stop) | None => return,
                        Some(QueueCommand::Restart) => break,
                        Some(QueueCommand::PurgeCache(_)) => continue,
                    },
                }
            }
        }
    }

    /// Waits, with no dataplane, for an operator's restart-queue (true), a
    /// removal or shutdown (false).
    async fn await_restart(&mut self) -> bool {
        loop {
            tokio::select! {
                cmd = self.ch.commands.recv() => match cmd {
                    Some(QueueCommand::Restart) => return true,
                    Some(QueueCommand::PurgeCache(_)) => continue,
                    Some(QueueCommand::Stop) | None => return false,
                },
                _ = self.ch.stop.changed() => return false,
            }
        }
    }

    /// The forwarding spec now, with current health.
    fn forward_now(&self, spec: &DataplaneSpec) -> Option<ForwardSpec> {
        spec.forward.clone().map(|mut f| {
            let live = self.ch.live.borrow();
            if live.len() == f.backends.len() {
                f.live = live.as_ref().clone();
            }
            f
        })
    }

    /// The sockets a dataplane gets with Init (`with_table`) or Reconfigure:
    /// one kernel-path socket per listen address, then forwarding's.
    fn sockets(&self, spec: &DataplaneSpec, with_table: bool) -> Result<Vec<OwnedFd>, String> {
        let mut fds = sockets::kernel_path(&spec.listen).map_err(|e| e.to_string())?;
        if let (Some(res), Some(f)) = (&self.ctx.forward, &spec.forward) {
            fds.extend(
                res.fds_for(f, with_table, self.queue)
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(fds)
    }

    fn init(&self, spec: &DataplaneSpec, descriptors: usize) -> ToDataplane {
        let c = &self.ctx;
        ToDataplane::Init(Box::new(DataplaneInit {
            protocol: PROTOCOL_VERSION,
            instance: c.instance.clone(),
            ifname: c.ifname.clone(),
            ifindex: c.ifindex,
            queue_id: self.queue,
            frames: c.frames,
            frame_size: c.frame_size,
            bind_mode: c.bind_mode,
            batch_size: spec.batch_size,
            idle_nap_us: spec.idle_nap_us,
            stats_interval_ms: spec.stats_interval_ms,
            answer: spec.answer.clone(),
            kernel_sockets: spec.listen.clone(),
            forward: self.forward_now(spec),
            descriptors: descriptors as u32,
        }))
    }

    async fn run_once(&mut self) -> Outcome {
        let queue = self.queue;
        let mut spec = self.ch.spec.borrow_and_update().clone();
        self.ch.live.borrow_and_update();
        let sockets = match self.sockets(&spec, true) {
            Ok(s) => s,
            Err(e) => return Outcome::Exited(e),
        };
        let cpu = crate::system::cpus::for_queue(&spec.cpus, queue);
        let Spawned {
            mut child,
            channel,
            pid,
        } = match spawn::spawn(&self.ctx.template, cpu) {
            Ok(s) => s,
            Err(e) => return Outcome::Exited(e.to_string()),
        };
        self.emit(QueueEvent::Started { queue, pid });
        self.phase(Phase::Starting);

        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
        if let Err(e) = channel.send(&self.init(&spec, fds.len()), &fds).await {
            self.evict(&mut child).await;
            return Outcome::Exited(format!("sending the configuration: {e}"));
        }
        // The dataplane holds them now; our copies would keep dead sockets in
        // the reuseport group.
        drop(fds);
        drop(sockets);

        let heartbeat =
            |s: &DataplaneSpec| Duration::from_millis(u64::from(s.supervisor.heartbeat_timeout_ms));
        let mut heartbeat_timeout = heartbeat(&spec);
        let started = Instant::now();
        let mut last_heard = Instant::now();
        let mut life = Life {
            born: started,
            registered: false,
            last: DataplaneCounters::new(),
            rate: checks::RateLimit::default(),
        };
        let mut tick = tokio::time::interval(HEARTBEAT_TICK);
        loop {
            tokio::select! {
                msg = channel.recv() => match msg {
                    Ok(Some(incoming)) => {
                        last_heard = Instant::now();
                        let shape = (
                            spec.answer.rules.len(),
                            spec.forward.as_ref().map_or(0, |f| f.backends.len()),
                        );
                        if let Err(reason) = self.handle(pid, incoming, &mut life, shape) {
                            self.evict(&mut child).await;
                            return Outcome::Exited(reason);
                        }
                    }
                    Ok(None) => {
                        let _ = self.slot.clear();
                        // It closed its channel: it is going; if it hangs
                        // instead, it is killed.
                        return Outcome::Exited(
                            match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                                Ok(status) => describe(&status),
                                Err(_) => {
                                    self.evict(&mut child).await;
                                    "closed its channel and hung: killed".into()
                                }
                            },
                        );
                    }
                    Err(e) => {
                        self.evict(&mut child).await;
                        return Outcome::Exited(format!("control channel: {e}"));
                    }
                },
                status = child.wait() => {
                    let _ = self.slot.clear();
                    return Outcome::Exited(describe(&status));
                }
                _ = tick.tick() => {
                    if !life.registered && started.elapsed() > READY_TIMEOUT {
                        self.evict(&mut child).await;
                        return Outcome::Exited(format!("no AF_XDP socket within {READY_TIMEOUT:?}"));
                    }
                    if life.registered && last_heard.elapsed() > heartbeat_timeout {
                        let silent = last_heard.elapsed().as_millis();
                        self.evict(&mut child).await;
                        return Outcome::Exited(format!(
                            "silent for {silent} ms (heartbeat timeout {} ms): killed",
                            heartbeat_timeout.as_millis()
                        ));
                    }
                }
                changed = self.ch.spec.changed() => {
                    if changed.is_err() {
                        self.stop_child(&mut child, &channel).await;
                        return Outcome::Stopped;
                    }
                    let new = self.ch.spec.borrow_and_update().clone();
                    if new.reconfigures(&spec)
                        && let Err(reason) = self.reconfigure(&channel, &new).await
                    {
                        self.evict(&mut child).await;
                        return Outcome::Exited(reason);
                    }
                    heartbeat_timeout = heartbeat(&new);
                    spec = new;
                }
                changed = self.ch.live.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let live = self.ch.live.borrow_and_update().as_ref().clone();
                    if let Err(e) = channel.send(&ToDataplane::Backends(live), &[]).await {
                        self.evict(&mut child).await;
                        return Outcome::Exited(format!("control channel: {e}"));
                    }
                }
                cmd = self.ch.commands.recv() => match cmd {
                    Some(QueueCommand::PurgeCache(p)) => {
                        if let Err(e) = channel.send(&ToDataplane::PurgeCache(p), &[]).await {
                            self.evict(&mut child).await;
                            return Outcome::Exited(format!("control channel: {e}"));
                        }
                    }
                    Some(QueueCommand::Restart) => {
                        self.stop_child(&mut child, &channel).await;
                        info!(queue, "dataplane replaced on request");
                        return Outcome::Restart;
                    }
                    Some(QueueCommand::Stop) | None => {
                        self.stop_child(&mut child, &channel).await;
                        return Outcome::Stopped;
                    }
                },
                _ = self.ch.stop.changed() => {
                    self.stop_child(&mut child, &channel).await;
                    return Outcome::Stopped;
                }
            }
        }
    }

    /// Sends the current rules and backends with fresh kernel-path sockets.
    async fn reconfigure(&self, channel: &Channel, spec: &DataplaneSpec) -> Result<(), String> {
        let sockets = self.sockets(spec, false)?;
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
        let msg = ToDataplane::Reconfigure(Box::new(Reconfigure {
            answer: spec.answer.clone(),
            kernel_sockets: spec.listen.clone(),
            forward: self.forward_now(spec),
            descriptors: fds.len() as u32,
        }));
        channel
            .send(&msg, &fds)
            .await
            .map_err(|e| format!("sending the new configuration: {e}"))
    }

    /// Acts on one message; an error means the dataplane misbehaved.
    fn handle(
        &mut self,
        pid: u32,
        incoming: Incoming,
        life: &mut Life,
        (rules, backends): (usize, usize),
    ) -> Result<(), String> {
        let queue = self.queue;
        life.rate.hit()?;
        let registered = &mut life.registered;
        if !matches!(incoming.msg, FromDataplane::Ready(_)) && !incoming.fds.is_empty() {
            return Err("descriptors beside a message that carries none".into());
        }
        match incoming.msg {
            FromDataplane::Ready(_) if *registered => Err("a second Ready".into()),
            FromDataplane::Ready(ready) => {
                let (peer_pid, peer_uid, _) = incoming.creds.ok_or("Ready without credentials")?;
                let uid = self.ctx.template.uid();
                if peer_pid as u32 != pid || peer_uid != uid {
                    return Err(format!(
                        "Ready from pid {peer_pid} uid {peer_uid}, expected our child {pid} uid {uid}"
                    ));
                }
                if ready.protocol != PROTOCOL_VERSION {
                    return Err(format!(
                        "dataplane speaks protocol {}, we {PROTOCOL_VERSION}",
                        ready.protocol
                    ));
                }
                let [fd] = <[_; 1]>::try_from(incoming.fds)
                    .map_err(|_| "Ready must carry exactly one descriptor")?;
                if !is_xdp_socket(fd.as_fd()) {
                    return Err("Ready carried something other than an AF_XDP socket".into());
                }
                self.slot
                    .set(fd.as_fd())
                    .map_err(|e| format!("XSKMAP update: {e}"))?;
                // `fd` drops here: the dataplane's copy is the last one, so the
                // slot empties by itself when the dataplane dies.
                *registered = true;
                info!(
                    queue,
                    pid,
                    zero_copy = ready.zero_copy,
                    umem_bytes = ready.umem_bytes,
                    "dataplane registered"
                );
                self.phase(Phase::Running);
                self.emit(QueueEvent::Registered {
                    queue,
                    zero_copy: ready.zero_copy,
                });
                Ok(())
            }
            FromDataplane::Clients(_) if !*registered => Err("client counts before Ready".into()),
            FromDataplane::Clients(counts) => {
                checks::client_counts(&counts, self.ch.spec.borrow().answer.tally.as_ref())?;
                self.emit(QueueEvent::Clients { queue, counts });
                Ok(())
            }
            FromDataplane::Stats(counters) => {
                checks::dataplane_counters(
                    &counters,
                    &life.last,
                    rules,
                    backends,
                    life.born.elapsed().as_secs(),
                )?;
                life.last = (*counters).clone();
                self.emit(QueueEvent::Stats { queue, counters });
                Ok(())
            }
            FromDataplane::Failed(f) if *registered => {
                Err(format!("failed while serving: {}: {}", f.stage, f.error))
            }
            FromDataplane::Failed(f) => {
                self.emit(QueueEvent::SetupFailed {
                    queue,
                    reason: format!("{} failed: {}", f.stage, f.error),
                });
                Ok(())
            }
        }
    }

    /// Takes the queue off AF_XDP at once (its slot emptied: the kernel path
    /// serves it), then kills the dataplane and waits for it.
    /// A child that does not die in time is reported (log, status, metric)
    /// and no successor is started: see `stuck`.
    async fn evict(&mut self, child: &mut WorkerProcess) {
        if let Err(e) = self.slot.clear() {
            warn!(queue = self.queue, error = %e, "could not empty the XSKMAP slot");
        }
        if !child.kill_within(KILL_TIMEOUT).await {
            self.stuck = true;
            self.emit(QueueEvent::Unkillable {
                queue: self.queue,
                pid: child.id(),
            });
        }
    }

    async fn stop_child(&mut self, child: &mut WorkerProcess, channel: &Channel) {
        let _ = channel.send(&ToDataplane::Shutdown, &[]).await;
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            warn!(
                queue = self.queue,
                "dataplane did not stop in time; killing it"
            );
            self.evict(child).await;
        }
    }
}

fn is_xdp_socket(fd: BorrowedFd<'_>) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into a live local.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && domain == libc::AF_XDP
}
