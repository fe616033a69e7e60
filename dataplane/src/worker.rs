//! The per-queue loop: completion → fill → RX → answer → TX, then the kernel
//! sockets, then counters; sleeps in poll() only when there is nothing to do.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use xdpdns_common::ipc::ToDataplane;
use xdpdns_common::stats::{DataplaneCounters, DropReason, RingLevels};

use xdpdns_common::config::FailAction;
use xdpdns_common::dns::Rcode;

use crate::answer::{Answerer, Response};
use crate::control::{Control, ControlError};
use crate::forward::{Delivery, Forwarder, FrameOutcome};
use crate::kernel_path::KernelPath;
use crate::xsk::{XdpDesc, Xsk};

/// Empty loop iterations before sleeping in poll().
const SPINS_BEFORE_SLEEP: u32 = 32;
/// While busy, the kernel sockets are also checked every this many iterations
/// (each check is a recvmmsg system call; poll() covers them when idle).
const KERNEL_CHECK_EVERY: u32 = 128;
/// While busy, the clock is read every this many iterations.
const CLOCK_EVERY: u32 = 64;
/// Transmissions are deferred while RX keeps delivering, up to this many:
/// in copy mode every kick is a system call that sends the whole batch.
const KICK_BATCH: u32 = 32;
/// After this long without work the loop blocks in poll() instead of napping.
const NAP_WINDOW: Duration = Duration::from_millis(2);
/// How long a shutdown waits for queued answers to leave.
const DRAIN: Duration = Duration::from_millis(200);

/// How the loop paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Descriptors per ring operation.
    pub batch: u32,
    /// How often counters go to the loader.
    pub stats_interval: Duration,
    /// Nap when a busy queue runs dry (zero: block in poll() at once).
    pub idle_nap: Duration,
    /// The queue this dataplane serves.
    pub queue: u32,
}

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM/SIGINT or a Shutdown message.
    Shutdown,
    /// The loader went away.
    LoaderGone,
}

pub struct Worker {
    xsk: Xsk,
    /// Chunks owned by us and unused, as UMEM offsets of their start.
    free: Vec<u64>,
    /// Answers waiting for room in the TX ring (partial reservations).
    backlog: VecDeque<XdpDesc>,
    answerer: Answerer,
    kernel: KernelPath,
    control: Control,
    counters: DataplaneCounters,
    batch: u32,
    stats_interval: Duration,
    stop: Arc<AtomicBool>,
    /// Nap length when the queue just went quiet; `None` blocks at once.
    nap: Option<Duration>,
    forwarder: Option<Forwarder>,
    queue: u32,
}

/// How often the forwarder's expired queries are swept.
const EXPIRE_EVERY: Duration = Duration::from_millis(10);
/// Where a payload goes in a chunk when a whole frame is built around it:
/// after the kernel's headroom and room for the largest headers.
const BUILD_AT: usize = 256 + 66;

/// Frames built for answers that did not arrive as frames (socket replies,
/// timeouts): a free chunk, the payload copied in, headers written before it.
struct Outbox<'a> {
    free: &'a mut Vec<u64>,
    umem: &'a mut crate::xsk::Umem,
    backlog: &'a mut VecDeque<XdpDesc>,
    kernel: &'a KernelPath,
}

impl Outbox<'_> {
    fn deliver(&mut self, d: Delivery<'_>) -> bool {
        match d {
            Delivery::Kernel { local, to, payload } => self.kernel.send_to(local, to, payload),
            Delivery::Xsk { headers, payload } => {
                let Some(base) = self.free.pop() else {
                    return false;
                };
                let built = self.umem.frame_mut(base).and_then(|chunk| {
                    let room = chunk.get_mut(BUILD_AT..BUILD_AT + payload.len())?;
                    room.copy_from_slice(payload);
                    let start =
                        crate::frame::write_headers(chunk, BUILD_AT, payload.len(), &headers)?;
                    Some((start, BUILD_AT + payload.len() - start))
                });
                match built {
                    Some((start, len)) => {
                        self.backlog.push_back(XdpDesc {
                            addr: base + start as u64,
                            len: len as u32,
                            options: 0,
                        });
                        true
                    }
                    None => {
                        self.free.push(base);
                        false
                    }
                }
            }
        }
    }
}

/// One received frame: answered in place, forwarded, a backend's reply
/// relayed, or dropped. `Ok((head, len))` transmits the chunk's bytes there;
/// `Err(None)` recycles the chunk (the frame went elsewhere or was counted).
fn process_frame(
    answerer: &mut Answerer,
    forwarder: Option<&mut Forwarder>,
    kernel: &KernelPath,
    c: &mut DataplaneCounters,
    chunk: &mut [u8],
    head: usize,
    len: usize,
) -> Result<(usize, usize), Option<DropReason>> {
    let frame_bytes = chunk
        .get(head..head + len)
        .ok_or(Some(DropReason::FrameTruncated))?;
    let p = crate::frame::parse(frame_bytes, answerer.verify_checksums()).map_err(Some)?;
    let dport = u16::from_be_bytes([chunk[head + p.l4 + 2], chunk[head + p.l4 + 3]]);
    let mut forwarder = forwarder;
    if let Some(f) = forwarder.as_deref_mut()
        && let Some(owner) = f.reply_port(dport)
    {
        let mut deliver = |d: Delivery<'_>| match d {
            Delivery::Kernel { local, to, payload } => kernel.send_to(local, to, payload),
            Delivery::Xsk { .. } => false,
        };
        return match f.reply_frame(chunk, head, &p, owner, c, &mut deliver) {
            FrameOutcome::Tx { head, len } => Ok((head, len)),
            _ => Err(None),
        };
    }
    let at = head + p.payload();
    let q = match answerer
        .respond(&mut chunk[at..], p.payload_len)
        .map_err(Some)?
    {
        Response::Answer(n) => {
            return Ok((head, crate::frame::write_reply(&mut chunk[head..], &p, n)));
        }
        Response::Forward(q) => q,
    };
    let action = match forwarder {
        Some(f) => match f.forward_frame(chunk, head, &p, &q, c) {
            FrameOutcome::Tx { head, len } => return Ok((head, len)),
            FrameOutcome::Consumed | FrameOutcome::Discard => return Err(None),
            FrameOutcome::Fail(a) => a,
        },
        None => FailAction::Refused,
    };
    let rcode = match action {
        FailAction::Drop => return Err(Some(DropReason::RuleDrop)),
        FailAction::ServFail => Rcode::ServFail,
        FailAction::Refused => Rcode::Refused,
    };
    let n = answerer
        .answer_with(&mut chunk[at..], &q, rcode)
        .map_err(Some)?;
    Ok((head, crate::frame::write_reply(&mut chunk[head..], &p, n)))
}

impl Worker {
    pub fn new(
        xsk: Xsk,
        answerer: Answerer,
        kernel: KernelPath,
        control: Control,
        tuning: Tuning,
        forwarder: Option<Forwarder>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let Tuning {
            batch,
            stats_interval,
            idle_nap,
            queue,
        } = tuning;
        let frames = xsk.umem.frames() as usize;
        let mut free = Vec::with_capacity(frames);
        free.extend(xsk.umem.chunks());
        Worker {
            xsk,
            free,
            backlog: VecDeque::with_capacity(frames),
            answerer,
            kernel,
            control,
            counters: DataplaneCounters::new(),
            batch,
            stats_interval,
            stop,
            nap: (idle_nap > Duration::ZERO).then_some(idle_nap),
            forwarder,
            queue,
        }
    }

    pub fn xsk(&self) -> &Xsk {
        &self.xsk
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Gives the kernel all the frames the fill ring takes.
    pub fn stock_fill_ring(&mut self) -> u32 {
        self.refill()
    }

    pub fn run(&mut self) -> Result<Exit, ControlError> {
        let mut next_report = Instant::now() + self.stats_interval;
        let mut idle = 0u32;
        let mut iteration = 0u32;
        let mut kernel_ready = true;
        let mut last_work = Instant::now();
        let mut next_expire = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(self.finish(Exit::Shutdown));
            }
            iteration = iteration.wrapping_add(1);
            self.counters.iterations += 1;
            let received = self.receive();
            let mut work = self.reclaim() + self.refill() + received + self.transmit(received);
            // Kernel sockets: while they deliver, every iteration; otherwise
            // now and then (poll() watches them when the loop sleeps).
            if kernel_ready || iteration.is_multiple_of(KERNEL_CHECK_EVERY) {
                let n = self.serve_sockets();
                kernel_ready = n > 0;
                work += n;
            }
            if work > 0 && !iteration.is_multiple_of(CLOCK_EVERY) {
                continue;
            }
            let now = Instant::now();
            if work > 0 {
                last_work = now;
            }
            if self.forwarder.is_some() && now >= next_expire {
                next_expire = now + EXPIRE_EVERY;
                self.expire();
            }
            if now >= next_report {
                next_report = now + self.stats_interval;
                if let Some(exit) = self.report_and_listen()? {
                    return Ok(self.finish(exit));
                }
            }
            let tx_pending = !self.backlog.is_empty() || self.xsk.tx.outstanding() > 0;
            if work > 0 || tx_pending {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < SPINS_BEFORE_SLEEP {
                continue;
            }
            idle = 0;
            if (!self.kernel.is_empty() || self.forwarder.is_some()) && self.serve_sockets() > 0 {
                kernel_ready = true;
                continue;
            }
            // Recently busy: nap instead of blocking, so the next packets
            // arrive as one batch rather than one wake-up each.
            if let Some(nap) = self.nap
                && now.saturating_duration_since(last_work) < NAP_WINDOW
            {
                self.counters.sleeps += 1;
                std::thread::sleep(nap);
                continue;
            }
            let timeout = next_report.saturating_duration_since(now);
            self.counters.sleeps += 1;
            let (kernel, control) = self.sleep(timeout);
            kernel_ready = kernel;
            if control && let Some(exit) = self.listen()? {
                return Ok(self.finish(exit));
            }
        }
    }

    /// Kernel-path sockets, then the forwarder's: returns datagrams handled.
    fn serve_sockets(&mut self) -> u32 {
        let mut n = self.kernel.serve(
            &mut self.answerer,
            &mut self.counters,
            4,
            self.forwarder.as_mut(),
        );
        if let Some(f) = self.forwarder.as_mut() {
            let mut out = Outbox {
                free: &mut self.free,
                umem: &mut self.xsk.umem,
                backlog: &mut self.backlog,
                kernel: &self.kernel,
            };
            n += f.poll(&mut self.counters, &mut |d| out.deliver(d));
        }
        n as u32
    }

    /// Sweeps this queue's expired forwarded queries.
    fn expire(&mut self) {
        if let Some(f) = self.forwarder.as_mut() {
            let mut out = Outbox {
                free: &mut self.free,
                umem: &mut self.xsk.umem,
                backlog: &mut self.backlog,
                kernel: &self.kernel,
            };
            f.expire(&mut self.counters, &mut |d| out.deliver(d));
        }
    }

    /// Completed transmissions: their chunks are ours again.
    fn reclaim(&mut self) -> u32 {
        let limit = self.xsk.umem.len() as u64;
        let mut done = self.xsk.completion.peek(self.batch * 2);
        let n = done.len();
        for addr in done.by_ref() {
            if addr < limit {
                self.free.push(self.xsk.umem.chunk_of(addr));
            }
        }
        done.release();
        n
    }

    /// Hands free chunks to the kernel for reception.
    fn refill(&mut self) -> u32 {
        if self.free.is_empty() {
            return 0;
        }
        let mut w = self.xsk.fill.reserve(self.free.len() as u32);
        let mut n = 0;
        while let Some(addr) = self.free.pop() {
            if let Err(addr) = w.push(addr) {
                self.free.push(addr);
                break;
            }
            n += 1;
        }
        w.commit();
        n
    }

    /// Answers received frames in place; answers join the TX backlog.
    fn receive(&mut self) -> u32 {
        let Xsk { rx, umem, .. } = &mut self.xsk;
        let mut frames = rx.peek(self.batch);
        let n = frames.len();
        for desc in frames.by_ref() {
            self.counters.xsk.received += 1;
            let base = umem.chunk_of(desc.addr);
            let Some(chunk) = umem.frame_mut(base) else {
                // An address outside the UMEM: the chunk cannot be recycled.
                self.counters.xsk.drop(DropReason::FrameTruncated);
                continue;
            };
            let head = (desc.addr - base) as usize;
            match process_frame(
                &mut self.answerer,
                self.forwarder.as_mut(),
                &self.kernel,
                &mut self.counters,
                chunk,
                head,
                desc.len as usize,
            ) {
                Ok((head, len)) => self.backlog.push_back(XdpDesc {
                    addr: base + head as u64,
                    len: len as u32,
                    options: 0,
                }),
                Err(reason) => {
                    if let Some(r) = reason {
                        self.counters.xsk.drop(r);
                    }
                    self.free.push(base);
                }
            }
        }
        frames.release();
        n
    }

    /// Moves the backlog into the TX ring (keeping what does not fit) and
    /// kicks the kernel when transmissions are outstanding — deferred while
    /// RX delivered something this round and fewer than [`KICK_BATCH`] wait.
    fn transmit(&mut self, received: u32) -> u32 {
        let mut queued = 0;
        if !self.backlog.is_empty() {
            let mut w = self.xsk.tx.reserve(self.backlog.len() as u32);
            while let Some(desc) = self.backlog.pop_front() {
                if let Err(desc) = w.push(desc) {
                    self.backlog.push_front(desc);
                    break;
                }
                queued += 1;
            }
            w.commit();
            self.counters.xsk.answered += u64::from(queued);
            if !self.backlog.is_empty() {
                self.counters.tx_ring_short += 1;
            }
        }
        let outstanding = self.xsk.tx.outstanding();
        let batch_ready = received == 0 || outstanding >= KICK_BATCH || !self.backlog.is_empty();
        if outstanding > 0 && batch_ready && (self.xsk.tx.needs_wakeup() || !self.xsk.zero_copy()) {
            self.counters.kicks += 1;
            if let Err(e) = self.xsk.kick_tx() {
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
                    | Some(libc::EINTR) => {}
                    _ => self.counters.kick_errors += 1,
                }
            }
        }
        queued
    }

    /// Sleeps until a socket is readable or `timeout`; returns whether the
    /// kernel sockets and the control socket are readable.
    fn sleep(&mut self, timeout: Duration) -> (bool, bool) {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(2 + self.kernel_fd_count());
        fds.push(PollFd::new(self.xsk_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(self.control.fd(), PollFlags::POLLIN));
        fds.extend(
            self.kernel
                .fds()
                .chain(self.forwarder.iter().flat_map(|f| f.fds()))
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
        );
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as u32)
            .unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, ms).is_err() {
            return (true, true);
        }
        let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        let control = ready(&fds[1]);
        let kernel = fds[2..].iter().any(ready);
        (kernel, control)
    }

    fn kernel_fd_count(&self) -> usize {
        self.kernel.fds().count()
    }

    fn xsk_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.xsk)
    }

    /// Sends counters and handles pending control messages.
    fn report_and_listen(&mut self) -> Result<Option<Exit>, ControlError> {
        self.refresh_gauges();
        match self.control.send_stats(&self.counters) {
            Err(ControlError::Closed) => return Ok(Some(Exit::LoaderGone)),
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        self.listen()
    }

    /// Handles waiting control messages.
    fn listen(&mut self) -> Result<Option<Exit>, ControlError> {
        loop {
            match self.control.try_receive() {
                Ok(None) => return Ok(None),
                Ok(Some((ToDataplane::Shutdown, _))) => return Ok(Some(Exit::Shutdown)),
                Ok(Some((ToDataplane::Reconfigure(r), fds))) => {
                    let r = *r;
                    let (sockets, forward) = crate::forward::ForwardFds::split(
                        fds,
                        r.kernel_sockets.len(),
                        r.forward.as_ref(),
                    )
                    .ok_or(ControlError::Unexpected(
                        "Reconfigure with a wrong number of sockets",
                    ))?;
                    self.reconfigure(&r.answer, sockets, r.kernel_sockets, r.forward, forward);
                }
                Ok(Some((ToDataplane::Backends(live), _))) => {
                    if let Some(f) = self.forwarder.as_mut() {
                        f.set_live(live);
                    }
                }
                Ok(Some((ToDataplane::Init(_), _))) => {
                    return Err(ControlError::Unexpected("second Init"));
                }
                Err(ControlError::Closed) => return Ok(Some(Exit::LoaderGone)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Swaps in new rules and kernel-path sockets; what waits on the old
    /// sockets is answered first.
    fn reconfigure(
        &mut self,
        answer: &xdpdns_common::config::AnswerSpec,
        sockets: Vec<std::os::fd::OwnedFd>,
        addrs: Vec<std::net::SocketAddr>,
        forward: Option<xdpdns_common::ipc::ForwardSpec>,
        forward_fds: Option<crate::forward::ForwardFds>,
    ) {
        self.kernel.serve(
            &mut self.answerer,
            &mut self.counters,
            64,
            self.forwarder.as_mut(),
        );
        // Replies waiting on the old backend sockets.
        self.serve_sockets();
        // A new rule list counts from zero (the loader resets its totals too).
        self.answerer = Answerer::replacing(&self.answerer, answer);
        self.kernel = KernelPath::new(sockets, addrs);
        let old = self.forwarder.take();
        self.forwarder = match (forward, forward_fds) {
            (Some(spec), Some(fds)) => match Forwarder::new(self.queue, spec, fds) {
                Ok(mut f) => {
                    if let Some(old) = old {
                        f.take_over(old, &mut self.counters);
                    }
                    Some(f)
                }
                Err(e) => {
                    tracing::error!(error = %e, "forwarding unavailable after reconfigure");
                    None
                }
            },
            _ => None,
        };
        tracing::info!(
            rules = answer.rules.len(),
            kernel_sockets = self.kernel.fds().count(),
            "reconfigured"
        );
    }

    /// Copies the answerer's hits into the counters.
    fn bank_rule_hits(&mut self) {
        self.counters.rule_hits.clear();
        self.counters
            .rule_hits
            .extend_from_slice(self.answerer.rule_hits());
    }

    fn refresh_gauges(&mut self) {
        self.bank_rule_hits();
        if let Some(f) = &self.forwarder {
            f.gauge(&mut self.counters);
        }
        if let Ok(s) = self.xsk.kernel_stats() {
            self.counters.xsk_kernel = s;
        }
        self.counters.rings = RingLevels {
            fill: self.xsk.fill.outstanding(),
            rx: self.xsk.rx.available(u32::MAX),
            tx: self.xsk.tx.outstanding(),
            completion: self.xsk.completion.available(u32::MAX),
            free: self.free.len() as u32,
            tx_backlog: self.backlog.len() as u32,
        };
    }

    /// Lets queued answers leave, then sends the final counters.
    fn finish(&mut self, exit: Exit) -> Exit {
        let deadline = Instant::now() + DRAIN;
        while (!self.backlog.is_empty() || self.xsk.tx.outstanding() > 0)
            && Instant::now() < deadline
        {
            self.reclaim();
            self.transmit(0);
            std::thread::yield_now();
        }
        self.refresh_gauges();
        if exit != Exit::LoaderGone {
            let _ = self.control.send_stats(&self.counters);
        }
        exit
    }

    pub fn counters(&self) -> &DataplaneCounters {
        &self.counters
    }
}
