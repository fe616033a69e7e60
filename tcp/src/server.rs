//! The TCP worker: the listeners the loader bound, an accept loop each
//! (ACL and admission first: a connection outside them is closed before a
//! byte is read), one task per connection ([`crate::conn`]), the backend
//! pools ([`crate::upstream`]), and the loader's channel for reloads,
//! health and counters. Single-threaded: the state is shared by `Rc`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use xdpdns_common::config::{FailAction, TcpLimits};
use xdpdns_common::ipc::workers::{FromTcp, TcpConfig, ToTcp};
use xdpdns_common::net::PrefixSet;
use xdpdns_common::stats::TcpCounters;
use xdpdns_dataplane::forward::keys::Draws;
use xdpdns_dataplane::pipeline::Pipeline;

use crate::admission::{Admission, Refusal};
use crate::channel::{Channel, ChannelError};
use crate::upstream::{UpstreamEvents, Upstreams};

/// What every task of the worker shares.
pub struct Shared {
    pub pipeline: RefCell<Pipeline>,
    pub counters: RefCell<TcpCounters>,
    pub limits: Cell<TcpLimits>,
    acl: RefCell<PrefixSet>,
    pub admission: Admission,
    pub upstreams: RefCell<Option<Upstreams>>,
    events: Rc<UpstreamEvents>,
    /// Forwarding timeout and what a timed-out query gets.
    fail: Cell<(Duration, FailAction)>,
}

impl Shared {
    pub fn new(config: &TcpConfig) -> std::io::Result<Rc<Shared>> {
        let events = Rc::new(UpstreamEvents::default());
        let shared = Rc::new(Shared {
            pipeline: RefCell::new(Pipeline::new(&config.answer, config.forward.as_ref())),
            counters: RefCell::new(TcpCounters::new()),
            limits: Cell::new(config.limits),
            acl: RefCell::new(PrefixSet::new(&config.answer.acl.allow)),
            admission: Admission::default(),
            upstreams: RefCell::new(None),
            events,
            fail: Cell::new((Duration::from_secs(2), FailAction::ServFail)),
        });
        shared.apply(config)?;
        Ok(shared)
    }

    /// Takes a new configuration: rules, backends, limits (open
    /// connections keep what they started with).
    pub fn apply(&self, config: &TcpConfig) -> std::io::Result<()> {
        {
            let old = self.pipeline.borrow();
            let new = Pipeline::reconfigured(&old, &config.answer, config.forward.as_ref());
            drop(old);
            *self.pipeline.borrow_mut() = new;
        }
        *self.acl.borrow_mut() = PrefixSet::new(&config.answer.acl.allow);
        self.limits.set(config.limits);
        let upstreams = match &config.forward {
            Some(f) => {
                self.fail.set((
                    Duration::from_millis(u64::from(f.timeout_ms)),
                    f.timeout_action,
                ));
                let backends: Vec<_> = f.backends.iter().map(|b| (b.address, b.source)).collect();
                self.counters
                    .borrow_mut()
                    .pipeline
                    .size_backends(backends.len());
                Some(Upstreams::new(
                    &backends,
                    config.limits.backend_connections,
                    Duration::from_millis(u64::from(config.limits.io_timeout_ms)),
                    self.events.clone(),
                    Draws::new()?,
                ))
            }
            None => None,
        };
        *self.upstreams.borrow_mut() = upstreams;
        Ok(())
    }

    pub fn fail_policy(&self) -> (Duration, FailAction) {
        self.fail.get()
    }

    /// The counters now, gauges and rule hits filled in.
    pub fn snapshot(&self) -> TcpCounters {
        let mut c = self.counters.borrow().clone();
        c.open = u64::from(self.admission.open());
        c.backend_connects = self.events.connects.get();
        c.backend_connect_errors = self.events.connect_errors.get();
        c.backend_stray = self.events.stray.get();
        c.pipeline.rule_hits = self.pipeline.borrow().rule_hits().to_vec();
        c
    }
}

/// Accepts on `listener` until aborted.
async fn accept(shared: Rc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !shared.acl.borrow().contains(peer.ip()) {
            shared.counters.borrow_mut().acl_denied += 1;
            continue;
        }
        let limits = shared.limits.get();
        let ticket = match shared.admission.admit(peer.ip(), &limits) {
            Ok(t) => t,
            Err(Refusal::Total) => {
                shared.counters.borrow_mut().refused_total += 1;
                continue;
            }
            Err(Refusal::Client) => {
                shared.counters.borrow_mut().refused_client += 1;
                continue;
            }
        };
        if configure(&stream, &limits).is_err() {
            continue;
        }
        shared.counters.borrow_mut().accepted += 1;
        tokio::task::spawn_local(crate::conn::serve(shared.clone(), stream, peer, ticket));
    }
}

/// No Nagle delay; unacknowledged data for `io_timeout_ms` ends the
/// connection in the kernel too (TCP_USER_TIMEOUT).
fn configure(stream: &tokio::net::TcpStream, limits: &TcpLimits) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let s = socket2::SockRef::from(stream);
    s.set_tcp_user_timeout(Some(Duration::from_millis(u64::from(limits.io_timeout_ms))))
}

/// Starts accepting on `listener` (on the current LocalSet).
pub fn serve_listener(
    shared: &Rc<Shared>,
    listener: std::net::TcpListener,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let l = TcpListener::from_std(listener)?;
    Ok(tokio::task::spawn_local(accept(shared.clone(), l)))
}

/// The listeners' accept tasks, replaced whole on a reconfiguration.
struct Listeners(Vec<JoinHandle<()>>);

impl Listeners {
    fn start(
        shared: &Rc<Shared>,
        fds: Vec<OwnedFd>,
        addrs: &[SocketAddr],
    ) -> std::io::Result<Listeners> {
        let mut tasks = Vec::new();
        for (fd, addr) in fds.into_iter().zip(addrs) {
            debug!(%addr, "listening");
            tasks.push(serve_listener(shared, std::net::TcpListener::from(fd))?);
        }
        Ok(Listeners(tasks))
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// How the worker ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Shutdown,
    LoaderGone,
}

/// Serves until the loader says stop (or goes away).
pub async fn run(
    channel: Channel,
    shared: Rc<Shared>,
    listen: Vec<OwnedFd>,
    config: &TcpConfig,
    stats_every: Duration,
) -> Result<Exit, ChannelError> {
    let mut listeners = Listeners::start(&shared, listen, &config.listen)?;
    channel.try_send(
        &FromTcp::Ready {
            protocol: xdpdns_common::ipc::workers::WORKER_PROTOCOL_VERSION,
        },
        None,
    )?;
    info!(listeners = config.listen.len(), "serving DNS over TCP");
    let mut tick = tokio::time::interval(stats_every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match channel.try_send(&FromTcp::Stats(Box::new(shared.snapshot())), None) {
                    Err(ChannelError::Closed) => return Ok(Exit::LoaderGone),
                    r => r?,
                }
            }
            msg = channel.recv::<ToTcp>() => {
                let (msg, fds) = match msg {
                    Err(ChannelError::Closed) => return Ok(Exit::LoaderGone),
                    r => r?,
                };
                match msg {
                    ToTcp::Reconfigure(c) => {
                        let fds = channel
                            .rest_of::<ToTcp>(fds, c.descriptors, |m| matches!(m, ToTcp::MoreFds))
                            .await?;
                        if fds.len() != c.listen.len() {
                            return Err(ChannelError::Unexpected("one listener per listen address"));
                        }
                        shared.apply(&c)?;
                        // New listeners first, then the old ones go.
                        let new = Listeners::start(&shared, fds, &c.listen)?;
                        listeners = new;
                        info!(listeners = c.listen.len(), "reconfigured");
                    }
                    ToTcp::Backends(live) => {
                        if let Some(b) = shared.pipeline.borrow_mut().backends() {
                            b.set_live(live);
                        }
                    }
                    ToTcp::Shutdown => {
                        drop(listeners);
                        // Answers in flight get a moment to be written.
                        let until = tokio::time::Instant::now() + Duration::from_secs(1);
                        while shared.admission.open() > 0 && tokio::time::Instant::now() < until {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let _ = channel.try_send(&FromTcp::Stats(Box::new(shared.snapshot())), None);
                        return Ok(Exit::Shutdown);
                    }
                    ToTcp::Init(_) => return Err(ChannelError::Unexpected("second Init")),
                    ToTcp::MoreFds => {
                        warn!("descriptors without a message");
                        return Err(ChannelError::Unexpected("descriptors without a message"));
                    }
                }
            }
        }
    }
}

/// Whether `fd` is a listening TCP socket (checked before serving it).
pub fn is_listener(fd: &OwnedFd) -> bool {
    nix::sys::socket::getsockopt(&fd.as_fd(), nix::sys::socket::sockopt::AcceptConn)
        .unwrap_or(false)
}
