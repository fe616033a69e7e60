//! One supervisor task per queue: start the dataplane, register its AF_XDP
//! socket in the XSKMAP, collect its counters, restart it with back-off when
//! it dies. Counters of dead dataplanes are kept so totals stay monotonic.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use xdpdns_common::ipc::{DataplaneInit, FromDataplane, PROTOCOL_VERSION, ToDataplane};

use super::backoff::Backoff;
use super::channel::{Channel, Incoming};
use super::spawn::{self, Spawned};
use crate::sockets;
use crate::state::{Event, Phase, Shared};

/// How long a new dataplane has to hand over its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dataplane has to exit after Shutdown before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How one dataplane run ended.
enum Outcome {
    /// We asked it to stop.
    Stopped,
    /// It died or failed; the reason is for the log.
    Exited(String),
}

pub async fn supervise(queue: u32, shared: Rc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(
        Duration::from_millis(50),
        Duration::from_secs(10),
        Duration::from_secs(60),
    );
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        let outcome = run_once(queue, &shared, &mut stop).await;
        shared.with_queue(queue, |q| q.retire());
        match outcome {
            Outcome::Stopped => break,
            Outcome::Exited(reason) => {
                let delay = backoff.next(started.elapsed());
                warn!(queue, %reason, restart_in_ms = delay.as_millis() as u64, "dataplane exited; the queue takes the kernel path until it is back");
                shared.with_queue(queue, |q| {
                    q.phase = Phase::BackingOff;
                    q.restarts += 1;
                    q.last_exit = Some(reason.clone());
                });
                shared.notify(Event::Exited(queue));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    shared.with_queue(queue, |q| q.phase = Phase::Stopped);
}

async fn run_once(queue: u32, shared: &Shared, stop: &mut watch::Receiver<bool>) -> Outcome {
    let listen = shared.listen();
    let sockets = match sockets::bind_all(&listen) {
        Ok(s) => s,
        Err(e) => return Outcome::Exited(e.to_string()),
    };
    let Spawned {
        mut child,
        channel,
        pid,
    } = match spawn::spawn(&shared.template, &shared.plan.dataplane_binary) {
        Ok(s) => s,
        Err(e) => return Outcome::Exited(e.to_string()),
    };
    shared.with_queue(queue, |q| q.start(pid));

    let init = ToDataplane::Init(Box::new(DataplaneInit {
        protocol: PROTOCOL_VERSION,
        instance: shared.plan.config.instance.clone(),
        ifname: shared.plan.interface.name.clone(),
        ifindex: shared.plan.interface.ifindex,
        queue_id: queue,
        frames: shared.plan.config.xsk.frames,
        frame_size: shared.plan.config.xsk.frame_size,
        bind_mode: shared.plan.config.xsk.bind_mode,
        batch_size: shared.plan.config.xsk.batch_size,
        stats_interval_ms: shared.plan.config.dataplane.stats_interval_ms,
        answer: shared.answer_spec(),
        kernel_sockets: listen,
    }));
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
    if let Err(e) = channel.send(&init, &fds).await {
        return Outcome::Exited(format!("sending the configuration: {e}"));
    }
    // The dataplane holds them now; our copies would keep dead sockets in
    // the reuseport group.
    drop(fds);
    drop(sockets);

    let ready_deadline = tokio::time::sleep(READY_TIMEOUT);
    tokio::pin!(ready_deadline);
    let mut registered = false;
    loop {
        tokio::select! {
            msg = channel.recv() => match msg {
                Ok(Some(incoming)) => {
                    if let Err(reason) = handle(queue, shared, pid, incoming, &mut registered) {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        return Outcome::Exited(reason);
                    }
                }
                Ok(None) => {
                    let status = child.wait().await;
                    return Outcome::Exited(describe(status));
                }
                Err(e) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Outcome::Exited(format!("control channel: {e}"));
                }
            },
            status = child.wait() => return Outcome::Exited(describe(status)),
            _ = &mut ready_deadline, if !registered => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Outcome::Exited(format!("no AF_XDP socket within {READY_TIMEOUT:?}"));
            }
            _ = stop.changed() => {
                stop_child(&mut child, &channel).await;
                return Outcome::Stopped;
            }
        }
    }
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

async fn stop_child(child: &mut tokio::process::Child, channel: &Channel) {
    let _ = channel.send(&ToDataplane::Shutdown, &[]).await;
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        warn!("dataplane did not stop in time; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
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
