//! One supervisor task per queue: start the dataplane, register its AF_XDP
//! socket in the XSKMAP, collect its counters, and restart it — with back-off
//! when it dies, at once when asked — until told to stop. A dataplane that
//! stops reporting is killed; a queue that keeps failing is left on the kernel
//! path. Counters of dead dataplanes are kept so totals stay monotonic.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, info, warn};
use xdpdns_common::ipc::{
    DataplaneInit, FromDataplane, PROTOCOL_VERSION, Reconfigure, ToDataplane,
};

use super::backoff::Backoff;
use super::channel::{Channel, Incoming};
use super::spawn::{self, Spawned};
use crate::sockets;
use crate::state::{Event, Phase, QueueCommand, Shared, SupervisorHandle};

/// How long a new dataplane has to hand over its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dataplane has to exit after Shutdown before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the heartbeat is checked.
const HEARTBEAT_TICK: Duration = Duration::from_millis(100);

/// How one dataplane run ended.
enum Outcome {
    /// Shutdown, or the queue was removed.
    Stopped,
    /// Replaced on request: start again at once, outside the budget.
    Restart,
    /// It died, hung or misbehaved; the reason is for the log.
    Exited(String),
}

/// Starts supervising `queue`.
pub fn start(queue: u32, shared: &Rc<Shared>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::task::spawn_local(supervise(queue, shared.clone(), rx));
    shared.add_supervisor(queue, SupervisorHandle { commands: tx, task });
}

async fn supervise(
    queue: u32,
    shared: Rc<Shared>,
    mut commands: mpsc::UnboundedReceiver<QueueCommand>,
) {
    let mut stop = shared.stop.clone();
    let mut backoff = Backoff::new(
        Duration::from_millis(50),
        Duration::from_secs(10),
        Duration::from_secs(60),
    );
    let mut recent: VecDeque<Instant> = VecDeque::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        let outcome = run_once(queue, &shared, &mut commands).await;
        shared.with_queue(queue, |q| q.retire());
        let reason = match outcome {
            Outcome::Stopped => break,
            Outcome::Restart => {
                recent.clear();
                shared.with_queue(queue, |q| q.restarts += 1);
                shared.notify(Event::Exited(queue));
                continue;
            }
            Outcome::Exited(reason) => reason,
        };
        shared.with_queue(queue, |q| {
            q.restarts += 1;
            q.last_exit = Some(reason.clone());
        });
        shared.notify(Event::Exited(queue));

        let sup = shared.config().supervisor;
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
            shared.with_queue(queue, |q| q.phase = Phase::KernelOnly);
            // Wait for an operator's restart-queue, a removal or shutdown.
            loop {
                tokio::select! {
                    cmd = commands.recv() => match cmd {
                        Some(QueueCommand::Restart) => { recent.clear(); break; }
                        Some(QueueCommand::Reconfigure) | Some(QueueCommand::Backends) => continue,
                        Some(QueueCommand::Stop) | None => return finish(queue, &shared),
                    },
                    _ = stop.changed() => return finish(queue, &shared),
                }
            }
            continue;
        }
        let delay = backoff.next(started.elapsed());
        warn!(
            queue,
            %reason,
            restart_in_ms = delay.as_millis() as u64,
            "dataplane exited; the queue takes the kernel path until it is back"
        );
        shared.with_queue(queue, |q| q.phase = Phase::BackingOff);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
            cmd = commands.recv() => match cmd {
                Some(QueueCommand::Stop) | None => break,
                _ => {}
            },
        }
    }
    finish(queue, &shared)
}

fn finish(queue: u32, shared: &Shared) {
    shared.with_queue(queue, |q| q.phase = Phase::Stopped);
}

fn init_for(queue: u32, shared: &Shared) -> ToDataplane {
    let config = shared.config();
    ToDataplane::Init(Box::new(DataplaneInit {
        protocol: PROTOCOL_VERSION,
        instance: config.instance.clone(),
        ifname: shared.plan.interface.name.clone(),
        ifindex: shared.plan.interface.ifindex,
        queue_id: queue,
        frames: shared.plan.config.xsk.frames,
        frame_size: shared.plan.config.xsk.frame_size,
        bind_mode: shared.plan.config.xsk.bind_mode,
        batch_size: config.xsk.batch_size,
        idle_nap_us: config.xsk.idle_nap_us,
        stats_interval_ms: config.dataplane.stats_interval_ms,
        answer: shared.answer_spec(),
        kernel_sockets: shared.listen(),
        forward: shared
            .forwarding()
            .map(|f| f.spec_with(&shared.backend_live())),
    }))
}

async fn run_once(
    queue: u32,
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<QueueCommand>,
) -> Outcome {
    let mut stop = shared.stop.clone();
    let mut sockets = match sockets::bind_all(&shared.listen()) {
        Ok(s) => s,
        Err(e) => return Outcome::Exited(e.to_string()),
    };
    if let Some(f) = shared.forwarding() {
        match f.fds_for(queue) {
            Ok(fds) => sockets.extend(fds),
            Err(e) => return Outcome::Exited(e.to_string()),
        }
    }
    let Spawned {
        mut child,
        channel,
        pid,
    } = match spawn::spawn(
        &shared.template,
        &shared.plan.dataplane_binary,
        crate::system::cpus::for_queue(&shared.config().dataplane.cpus, queue),
    ) {
        Ok(s) => s,
        Err(e) => return Outcome::Exited(e.to_string()),
    };
    shared.with_queue(queue, |q| q.start(pid));

    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
    if let Err(e) = channel.send(&init_for(queue, shared), &fds).await {
        return Outcome::Exited(format!("sending the configuration: {e}"));
    }
    // The dataplane holds them now; our copies would keep dead sockets in
    // the reuseport group.
    drop(fds);
    drop(sockets);

    let heartbeat_timeout =
        Duration::from_millis(u64::from(shared.config().supervisor.heartbeat_timeout_ms));
    let started = Instant::now();
    let mut last_heard = Instant::now();
    let mut registered = false;
    let mut tick = tokio::time::interval(HEARTBEAT_TICK);
    loop {
        tokio::select! {
            msg = channel.recv() => match msg {
                Ok(Some(incoming)) => {
                    last_heard = Instant::now();
                    if let Err(reason) = handle(queue, shared, pid, incoming, &mut registered) {
                        kill(&mut child).await;
                        return Outcome::Exited(reason);
                    }
                }
                Ok(None) => {
                    let status = child.wait().await;
                    return Outcome::Exited(describe(status));
                }
                Err(e) => {
                    kill(&mut child).await;
                    return Outcome::Exited(format!("control channel: {e}"));
                }
            },
            status = child.wait() => return Outcome::Exited(describe(status)),
            _ = tick.tick() => {
                if !registered && started.elapsed() > READY_TIMEOUT {
                    kill(&mut child).await;
                    return Outcome::Exited(format!("no AF_XDP socket within {READY_TIMEOUT:?}"));
                }
                if registered && last_heard.elapsed() > heartbeat_timeout {
                    kill(&mut child).await;
                    return Outcome::Exited(format!(
                        "silent for {} ms (heartbeat timeout {} ms): killed",
                        last_heard.elapsed().as_millis(),
                        heartbeat_timeout.as_millis()
                    ));
                }
            }
            cmd = commands.recv() => match cmd {
                Some(QueueCommand::Reconfigure) => {
                    if let Err(reason) = reconfigure(shared, &channel, queue).await {
                        kill(&mut child).await;
                        return Outcome::Exited(reason);
                    }
                }
                Some(QueueCommand::Backends) => {
                    let msg = ToDataplane::Backends(shared.backend_live());
                    if let Err(e) = channel.send(&msg, &[]).await {
                        kill(&mut child).await;
                        return Outcome::Exited(format!("control channel: {e}"));
                    }
                }
                Some(QueueCommand::Restart) => {
                    stop_child(&mut child, &channel).await;
                    info!(queue, "dataplane replaced on request");
                    return Outcome::Restart;
                }
                Some(QueueCommand::Stop) | None => {
                    stop_child(&mut child, &channel).await;
                    return Outcome::Stopped;
                }
            },
            _ = stop.changed() => {
                stop_child(&mut child, &channel).await;
                return Outcome::Stopped;
            }
        }
    }
}

/// Sends the current rules and fresh kernel-path sockets.
async fn reconfigure(shared: &Shared, channel: &Channel, queue: u32) -> Result<(), String> {
    let listen = shared.listen();
    let mut sockets = sockets::bind_all(&listen).map_err(|e| e.to_string())?;
    if let Some(f) = shared.forwarding() {
        sockets.extend(f.fds_for(queue).map_err(|e| e.to_string())?);
    }
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
    let msg = ToDataplane::Reconfigure(Box::new(Reconfigure {
        answer: shared.answer_spec(),
        kernel_sockets: listen,
        forward: shared
            .forwarding()
            .map(|f| f.spec_with(&shared.backend_live())),
    }));
    channel
        .send(&msg, &fds)
        .await
        .map_err(|e| format!("sending the new configuration: {e}"))
}

/// Acts on one message; an error means the dataplane misbehaved.
fn handle(
    queue: u32,
    shared: &Shared,
    pid: u32,
    incoming: Incoming,
    registered: &mut bool,
) -> Result<(), String> {
    match incoming.msg {
        FromDataplane::Ready(ready) => {
            let (peer_pid, peer_uid, _) = incoming.creds.ok_or("Ready without credentials")?;
            if peer_pid as u32 != pid || peer_uid != shared.template.uid() {
                return Err(format!(
                    "Ready from pid {peer_pid} uid {peer_uid}, expected our child {pid} uid {}",
                    shared.template.uid()
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
            shared
                .register(queue, fd.as_fd())
                .map_err(|e| format!("XSKMAP update: {e}"))?;
            // `fd` drops here: the dataplane's copy is the last one, so the
            // slot empties by itself when the dataplane dies.
            *registered = true;
            shared.with_queue(queue, |q| q.ready(ready.zero_copy));
            info!(
                queue,
                pid,
                zero_copy = ready.zero_copy,
                umem_bytes = ready.umem_bytes,
                "dataplane registered"
            );
            shared.notify(Event::Registered(queue));
            Ok(())
        }
        FromDataplane::Stats(counters) => {
            shared.with_queue(queue, |q| {
                q.live = *counters;
                q.last_report = Some(Instant::now());
            });
            Ok(())
        }
        FromDataplane::Failed(f) => {
            let reason = format!("{} failed: {}", f.stage, f.error);
            shared.notify(Event::SetupFailed(queue, reason.clone()));
            shared.with_queue(queue, |q| q.last_exit = Some(reason));
            Ok(())
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

async fn kill(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

async fn stop_child(child: &mut tokio::process::Child, channel: &Channel) {
    let _ = channel.send(&ToDataplane::Shutdown, &[]).await;
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        warn!("dataplane did not stop in time; killing it");
        kill(child).await;
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended".into(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}
