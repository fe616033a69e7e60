//! The Prometheus endpoint, unprivileged: hyper serves `GET /metrics` from
//! the latest snapshot the loader rendered (each a sealed memfd sent over
//! the control channel). The loader parses no HTTP; this process holds no
//! capability and cannot connect anywhere.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;
use xdpdns_common::ipc::workers::{FromMetrics, MetricsCounters, ToMetrics};
use xdpdns_common::net::PrefixSet;

use crate::channel::{Channel, ChannelError};

/// Largest snapshot read (a bigger one is refused, the old one kept).
pub const MAX_SNAPSHOT: usize = 16 << 20;
/// A whole connection: request headers, answer, done.
const CONNECTION_TIME: Duration = Duration::from_secs(10);
const HEADER_TIME: Duration = Duration::from_secs(5);

/// The latest exposition text and what was served.
#[derive(Default)]
pub struct Exporter {
    text: RefCell<Bytes>,
    requests: Cell<u64>,
    refused: Cell<u64>,
    bad_requests: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

impl Exporter {
    /// Reads a snapshot from `fd` (a memfd) and makes it the current one.
    pub fn take_snapshot(&self, fd: &OwnedFd) -> std::io::Result<()> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: pread writes at most `chunk.len()` bytes into `chunk`.
            let n = unsafe {
                libc::pread64(
                    fd.as_raw_fd(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                    out.len() as i64,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n as usize]);
            if out.len() > MAX_SNAPSHOT {
                return Err(std::io::Error::other("snapshot too large"));
            }
        }
        *self.text.borrow_mut() = Bytes::from(out);
        Ok(())
    }

    pub fn counters(&self) -> MetricsCounters {
        MetricsCounters {
            requests: self.requests.get(),
            refused: self.refused.get(),
            bad_requests: self.bad_requests.get(),
        }
    }

    /// The response to one request.
    pub fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        self.answer(req.method(), req.uri().path())
    }

    fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let (status, body, kind) = match (method, path) {
            (&Method::GET, "/metrics") => {
                bump(&self.requests);
                (
                    StatusCode::OK,
                    self.text.borrow().clone(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }
            (&Method::GET, _) => {
                bump(&self.bad_requests);
                (
                    StatusCode::NOT_FOUND,
                    Bytes::from_static(b"try /metrics\n"),
                    "text/plain",
                )
            }
            _ => {
                bump(&self.bad_requests);
                (StatusCode::METHOD_NOT_ALLOWED, Bytes::new(), "text/plain")
            }
        };
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        if let Ok(v) = kind.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    }
}

/// Serves `listener` to `allow`, at most `max_connections` at once.
pub async fn serve(
    exporter: Rc<Exporter>,
    listener: TcpListener,
    max_connections: u32,
    allow: PrefixSet,
) {
    let cap = Arc::new(Semaphore::new(max_connections.max(1) as usize));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !allow.contains(peer.ip()) {
            bump(&exporter.refused);
            continue;
        }
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            bump(&exporter.refused);
            continue;
        };
        let ex = exporter.clone();
        tokio::task::spawn_local(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = ex.respond(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIME)
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
            drop(permit);
        });
    }
}

/// Takes snapshots and sends counters until the loader says stop.
pub async fn run(
    channel: Channel,
    exporter: Rc<Exporter>,
    listener: TcpListener,
    max: u32,
    allow: PrefixSet,
) -> Result<(), ChannelError> {
    let server = tokio::task::spawn_local(serve(exporter.clone(), listener, max, allow));
    channel.try_send(
        &FromMetrics::Ready {
            protocol: xdpdns_common::ipc::workers::WORKER_PROTOCOL_VERSION,
        },
        None,
    )?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = channel.try_send(&FromMetrics::Stats(exporter.counters()), None) {
                    break Err(e);
                }
            }
            msg = channel.recv::<ToMetrics>() => match msg {
                Ok((ToMetrics::Snapshot, fds)) => {
                    let [fd] = <[OwnedFd; 1]>::try_from(fds)
                        .map_err(|_| ChannelError::Unexpected("a snapshot comes with one descriptor"))?;
                    if let Err(e) = exporter.take_snapshot(&fd) {
                        debug!(error = %e, "snapshot not taken");
                    }
                }
                Ok((ToMetrics::Shutdown, _)) | Err(ChannelError::Closed) => break Ok(()),
                Ok((ToMetrics::Init { .. }, _)) => break Err(ChannelError::Unexpected("second Init")),
                Err(e) => break Err(e),
            }
        }
    };
    server.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let ex = Exporter::default();
        let memfd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::write(&memfd, b"xdpdns_ready 1\n").unwrap();
        ex.take_snapshot(&memfd).unwrap();
        let ok = ex.answer(&Method::GET, "/metrics");
        assert_eq!(ok.status(), StatusCode::OK);
        let no = ex.answer(&Method::GET, "/");
        assert_eq!(no.status(), StatusCode::NOT_FOUND);
        let post = ex.answer(&Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        let c = ex.counters();
        assert_eq!((c.requests, c.bad_requests), (1, 2));
        assert_eq!(&ex.text.borrow()[..], b"xdpdns_ready 1\n");
    }
}
