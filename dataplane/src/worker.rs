//! The per-queue loop: completion → fill → RX → decide → TX, then whatever
//! sockets epoll reports ready (kernel path, backends, control), then
//! counters; sleeps (ppoll on the epoll set and the AF_XDP socket, see
//! `poller`) only when there is nothing to do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xdpdns_common::ipc::ToDataplane;
use xdpdns_common::stats::{DataplaneCounters, DropReason};

use crate::control::{Control, ControlError};
use crate::engine::Engine;
use crate::forward::{Emit, ForwardFds, Forwarder};
use crate::frame::Headers;
use crate::kernel_path::KernelPath;
use crate::pipeline::Pipeline;
use crate::poller::{Poller, Token};
use crate::xsk::Xsk;

/// Empty loop iterations before sleeping.
const SPINS_BEFORE_SLEEP: u32 = 32;
/// While busy, the sockets are also checked every this many iterations (an
/// epoll_wait that does not block; sleeping covers them when idle).
const SOCKET_CHECK_EVERY: u32 = 128;
/// While busy, the clock is read every this many iterations.
const CLOCK_EVERY: u32 = 64;
/// After this long without work the loop blocks instead of napping.
const NAP_WINDOW: Duration = Duration::from_millis(2);
/// How long a shutdown waits for queued answers to leave.
const DRAIN: Duration = Duration::from_millis(200);
/// How often the forwarder's region is swept (timeouts, answered queries).
const SWEEP_EVERY: Duration = Duration::from_millis(10);
/// How often with nothing of ours in flight (entries left by a predecessor
/// or a sibling are still found and timed out).
const SWEEP_IDLE: Duration = Duration::from_millis(100);
/// Where a payload goes in a chunk when a whole frame is built around it:
/// after the kernel's headroom and room for the largest headers.
const BUILD_AT: usize = 256 + 66;

/// How the loop paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Descriptors per ring operation.
    pub batch: u32,
    /// How often counters go to the loader.
    pub stats_interval: Duration,
    /// Nap when a busy queue runs dry (zero: block at once).
    pub idle_nap: Duration,
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
    engine: Engine,
    kernel: KernelPath,
    control: Control,
    poller: Poller,
    counters: DataplaneCounters,
    batch: u32,
    stats_interval: Duration,
    stop: Arc<AtomicBool>,
    /// Nap length when the queue just went quiet; `None` blocks at once.
    nap: Option<Duration>,
    /// The key of the answers-per-client tally, drawn at start (a tally
    /// may be turned on later, under seccomp, without getrandom).
    tally_key: (u64, u64),
}

/// Answers sent through a kernel-path socket.
struct KernelOnly<'a>(&'a KernelPath);

impl Emit for KernelOnly<'_> {
    fn kernel(&mut self, local: SocketAddr, to: SocketAddr, payload: &[u8]) -> bool {
        self.0.send_to(local, to, payload)
    }
    fn frame(&mut self, _: &Headers, _: &[u8]) -> bool {
        // During RX the frames are in hand: the kernel socket it is.
        false
    }
}

/// Answers that did not arrive as frames (socket replies, timeouts): a
/// frame is built around them in a free chunk, or the kernel socket sends.
struct Outbox<'a> {
    xsk: &'a mut Xsk,
    kernel: &'a KernelPath,
}

impl Emit for Outbox<'_> {
    fn kernel(&mut self, local: SocketAddr, to: SocketAddr, payload: &[u8]) -> bool {
        self.kernel.send_to(local, to, payload)
    }
    fn frame(&mut self, h: &Headers, payload: &[u8]) -> bool {
        self.xsk.build(|chunk| {
            let room = chunk.get_mut(BUILD_AT..BUILD_AT + payload.len())?;
            room.copy_from_slice(payload);
            let start = crate::frame::write_headers(chunk, BUILD_AT, payload.len(), h)?;
            Some((start, BUILD_AT + payload.len() - start))
        })
    }
    fn frames_free(&self) -> usize {
        self.xsk.free_chunks()
    }
}

/// What serving the ready sockets found.
#[derive(Default)]
struct Served {
    datagrams: u32,
    control: bool,
}

impl Worker {
    pub fn new(
        xsk: Xsk,
        engine: Engine,
        kernel: KernelPath,
        control: Control,
        tuning: Tuning,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let Tuning {
            batch,
            stats_interval,
            idle_nap,
        } = tuning;
        let mut xsk = xsk;
        if engine.forwarder.is_some() {
            xsk.reserve_for_builds();
        }
        let poller = Poller::new()?;
        poller.add(control.fd(), Token::Control)?;
        kernel.watch(&poller)?;
        if let Some(f) = &engine.forwarder {
            f.watch(&poller)?;
        }
        let mut counters = DataplaneCounters::new();
        counters.size_backends(engine.pipeline.backend_count());
        let mut draws = crate::forward::keys::Draws::new()?;
        let tally_key = (draws.draw(), draws.draw());
        Ok(Worker {
            xsk,
            engine,
            kernel,
            control,
            poller,
            counters,
            batch,
            stats_interval,
            stop,
            nap: (idle_nap > Duration::ZERO).then_some(idle_nap),
            tally_key,
        })
    }

    /// Tallies answers per client for the dynamic block rules (`spec`), or
    /// stops; a tally kept with the same spec keeps its counts.
    pub fn set_tally(&mut self, spec: Option<xdpdns_common::config::TallySpec>) {
        if self.engine.tally.as_ref().map(crate::tally::Tally::spec) != spec.as_ref() {
            self.engine.tally = spec.map(|s| crate::tally::Tally::new(s, self.tally_key));
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
        self.xsk.refill()
    }

    pub fn run(&mut self) -> Result<Exit, ControlError> {
        let mut next_report = Instant::now() + self.stats_interval;
        let mut idle = 0u32;
        let mut iteration = 0u32;
        let mut sockets_ready = true;
        let mut last_work = Instant::now();
        let mut next_sweep = Instant::now();
        let mut next_tally = Instant::now() + crate::tally::REPORT_EVERY;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(self.finish(Exit::Shutdown));
            }
            iteration = iteration.wrapping_add(1);
            self.counters.iterations += 1;
            if let Some(f) = self.engine.forwarder.as_ref() {
                f.new_batch();
            }
            let reclaimed = self.xsk.reclaim(u32::MAX);
            let refilled = self.xsk.refill();
            let mut work = reclaimed + refilled;
            // Sockets first — backends' replies finish work already in
            // flight, so an overloaded queue keeps answering at capacity and
            // the excess waits (and is dropped) in the RX ring instead of
            // being forwarded for nothing. While they deliver, every
            // iteration; otherwise now and then (sleeping watches them).
            if sockets_ready || iteration.is_multiple_of(SOCKET_CHECK_EVERY) {
                let served = self.serve_ready(Duration::ZERO);
                sockets_ready = served.datagrams > 0;
                work += served.datagrams;
                if served.control
                    && let Some(exit) = self.listen()?
                {
                    return Ok(self.finish(exit));
                }
            }
            let received = self.receive();
            work += received + self.transmit(received > 0);
            if work > 0 && !iteration.is_multiple_of(CLOCK_EVERY) {
                continue;
            }
            let now = Instant::now();
            if work > 0 {
                last_work = now;
            }
            if let Some(f) = self.engine.forwarder.as_ref() {
                // A query forwarded while idle brings the next sweep in.
                if f.busy() {
                    next_sweep = next_sweep.min(now + SWEEP_EVERY);
                }
                if now >= next_sweep {
                    self.sweep();
                    let busy = self.engine.forwarder.as_ref().is_some_and(Forwarder::busy);
                    next_sweep = now + if busy { SWEEP_EVERY } else { SWEEP_IDLE };
                }
            }
            if now >= next_tally {
                next_tally = now + crate::tally::REPORT_EVERY;
                if let Some(t) = self.engine.tally.as_mut() {
                    let counts = t.drain();
                    if !counts.is_empty() {
                        self.control.send_clients(counts)?;
                    }
                }
            }
            if now >= next_report {
                next_report = now + self.stats_interval;
                if let Some(exit) = self.report_and_listen()? {
                    return Ok(self.finish(exit));
                }
            }
            if work > 0 || self.xsk.tx_pending() {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < SPINS_BEFORE_SLEEP {
                continue;
            }
            idle = 0;
            // Recently busy: nap instead of blocking, so the next packets
            // arrive as one batch rather than one wake-up each.
            if let Some(nap) = self.nap
                && now.saturating_duration_since(last_work) < NAP_WINDOW
            {
                self.counters.sleeps += 1;
                std::thread::sleep(nap);
                sockets_ready = true;
                continue;
            }
            let timeout = next_report
                .min(next_sweep)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.counters.sleeps += 1;
            let served = self.serve_ready(timeout);
            sockets_ready = served.datagrams > 0;
            if served.control
                && let Some(exit) = self.listen()?
            {
                return Ok(self.finish(exit));
            }
        }
    }

    /// Waits up to `timeout` for sockets and serves the ready ones.
    fn serve_ready(&mut self, timeout: Duration) -> Served {
        let Worker {
            xsk,
            engine,
            kernel,
            poller,
            counters,
            ..
        } = self;
        let mut served = Served::default();
        let ready = poller.wait(timeout, std::os::fd::AsFd::as_fd(&*xsk));
        // After a wait, the batch's clock is stale (a poll without one
        // stays in the loop iteration that already renewed it).
        if !timeout.is_zero()
            && let Some(f) = engine.forwarder.as_ref()
        {
            f.new_batch();
        }
        for token in ready {
            match *token {
                Token::Xsk => {}
                Token::Control => served.control = true,
                Token::Kernel(i) => {
                    served.datagrams += kernel.serve_one(i, engine, counters, 4) as u32;
                }
                Token::Backend(..) | Token::Steered(_) => {
                    let clamp = engine.pipeline.ttl_clamp();
                    if let Some(f) = engine.forwarder.as_mut() {
                        let mut out = Outbox {
                            xsk: &mut *xsk,
                            kernel: &*kernel,
                        };
                        let n = match *token {
                            Token::Backend(b, s) => f.serve_socket(b, s, clamp, counters, &mut out),
                            Token::Steered(i) => f.serve_steered(i, clamp, counters, &mut out),
                            _ => 0,
                        };
                        served.datagrams += n as u32;
                    }
                }
            }
        }
        served
    }

    /// Sweeps this queue's region of the in-flight table.
    fn sweep(&mut self) {
        let Engine {
            pipeline,
            forwarder,
            ..
        } = &mut self.engine;
        let udp_size = pipeline.udp_size();
        if let (Some(f), Some(backends)) = (forwarder.as_mut(), pipeline.backends()) {
            #[cfg(feature = "test-hooks")]
            {
                let (queue, table) = f.shared();
                crate::hooks::scribble(queue, table);
            }
            let mut out = Outbox {
                xsk: &mut self.xsk,
                kernel: &self.kernel,
            };
            f.sweep(backends, &mut self.counters, udp_size, &mut out);
        }
    }

    /// Decides about received frames; answers join the TX backlog.
    fn receive(&mut self) -> u32 {
        let Worker {
            xsk,
            engine,
            kernel,
            counters,
            batch,
            ..
        } = self;
        let mut emit = KernelOnly(kernel);
        let rx = xsk.receive(*batch, |chunk, head, len| {
            engine.frame(chunk, head, len, counters, &mut emit)
        });
        // Descriptors the kernel should never hand over.
        for _ in 0..rx.invalid {
            counters.xsk.received += 1;
            counters.xsk.drop(DropReason::FrameTruncated);
        }
        rx.received
    }

    /// Moves queued answers into the TX ring and wakes the kernel (see
    /// [`Xsk::flush`]).
    fn transmit(&mut self, more_coming: bool) -> u32 {
        let tx = self.xsk.flush(more_coming);
        self.counters.xsk.answered += u64::from(tx.queued);
        if tx.waiting > 0 {
            self.counters.tx_ring_short += 1;
        }
        if tx.kicked {
            self.counters.kicks += 1;
        }
        if tx.kick_failed {
            self.counters.kick_errors += 1;
        }
        tx.queued
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
                    let fds = self.control.rest_of(fds, r.descriptors)?;
                    let (sockets, forward) =
                        ForwardFds::split(fds, r.kernel_sockets.len(), r.forward.as_ref(), false)
                            .ok_or(ControlError::Unexpected(
                            "Reconfigure with a wrong number of sockets",
                        ))?;
                    self.reconfigure(&r.answer, sockets, r.kernel_sockets, r.forward, forward);
                }
                Ok(Some((ToDataplane::PurgeCache(p), _))) => {
                    if let Some(cache) = self.engine.forwarder.as_ref().and_then(|f| f.cache()) {
                        self.counters.cache.purged += cache.purge(&p.name, p.qtype, p.suffix);
                    }
                }
                Ok(Some((ToDataplane::Backends(live), _))) => {
                    if let Some(b) = self.engine.pipeline.backends() {
                        b.set_live(live);
                    }
                }
                Ok(Some((ToDataplane::Init(_), _))) => {
                    return Err(ControlError::Unexpected("second Init"));
                }
                Ok(Some((ToDataplane::MoreFds, _))) => {
                    return Err(ControlError::Unexpected("descriptors without a message"));
                }
                Err(ControlError::Closed) => return Ok(Some(Exit::LoaderGone)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Swaps in new rules, backends and kernel-path sockets; what waits on
    /// the old sockets is answered first.
    fn reconfigure(
        &mut self,
        answer: &xdpdns_common::config::AnswerSpec,
        sockets: Vec<std::os::fd::OwnedFd>,
        addrs: Vec<SocketAddr>,
        forward: Option<xdpdns_common::ipc::ForwardSpec>,
        forward_fds: Option<ForwardFds>,
    ) {
        self.serve_ready(Duration::ZERO);
        self.set_tally(answer.tally.clone());
        let pipeline = Pipeline::reconfigured(&self.engine.pipeline, answer, forward.as_ref());
        // Per-backend counters follow their backend to its new index.
        if let (Some(new), Some(old)) = (forward.as_ref(), self.engine.pipeline.backends()) {
            let map: Vec<Option<usize>> =
                new.backends.iter().map(|b| old.index_of(b.tag)).collect();
            self.counters.remap_backends(&map);
            self.counters.size_backends(map.len());
        }
        self.engine.pipeline = pipeline;
        // The old sockets close (and leave the epoll set) as they drop.
        let listen = addrs.clone();
        self.kernel = KernelPath::new(sockets, addrs);
        let old = self.engine.forwarder.take();
        self.engine.forwarder = match (old, forward, forward_fds) {
            (Some(old), Some(spec), Some(fds)) => match old.reconfigured(spec, fds) {
                Ok(mut f) => {
                    f.set_listen(&listen);
                    Some(f)
                }
                Err(e) => {
                    tracing::error!(error = %e, "forwarding unavailable after reconfigure");
                    None
                }
            },
            _ => None,
        };
        let watched = self
            .kernel
            .watch(&self.poller)
            .and_then(|()| match &self.engine.forwarder {
                Some(f) => f.watch(&self.poller),
                None => Ok(()),
            });
        if let Err(e) = watched {
            tracing::error!(error = %e, "cannot watch the new sockets");
        }
        tracing::info!(
            rules = answer.rules.len(),
            kernel_sockets = self.kernel.fds().count(),
            "reconfigured"
        );
    }

    fn refresh_gauges(&mut self) {
        self.counters.rule_hits.clear();
        self.counters
            .rule_hits
            .extend_from_slice(self.engine.pipeline.rule_hits());
        if let Some(f) = &self.engine.forwarder {
            f.gauge(&mut self.counters);
        }
        if let Ok(s) = self.xsk.kernel_stats() {
            self.counters.xsk_kernel = s;
        }
        self.counters.rings = self.xsk.levels();
    }

    /// Lets queued answers leave, then sends the final counters.
    fn finish(&mut self, exit: Exit) -> Exit {
        let deadline = Instant::now() + DRAIN;
        while self.xsk.tx_pending() && Instant::now() < deadline {
            self.xsk.reclaim(self.batch * 2);
            self.transmit(false);
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
