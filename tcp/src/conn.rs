//! One client connection: queries read (bounded in time and count), each
//! decided by the pipeline — answered here, or forwarded and answered when
//! the backend answers — and the answers written as they are ready, out
//! of order when the client pipelines (RFC 7766 §6.2.1.1). Up to
//! `max_in_flight_per_connection` queries are handled at once; reading
//! waits beyond that. An answer not written within `io_timeout_ms` (a
//! reader that stopped reading) ends the connection.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use xdpdns_common::config::FailAction;
use xdpdns_common::stats::DropReason;
use xdpdns_dataplane::dns::HEADER_LEN;
use xdpdns_dataplane::pipeline::{Peer, Transport, Verdict};

use crate::admission::Ticket;
use crate::framing::{self, ReadError};
use crate::server::Shared;
use crate::upstream::UpstreamError;

/// Serves `stream` from `peer` until it ends; `ticket` is its place.
pub async fn serve(shared: Rc<Shared>, stream: TcpStream, peer: SocketAddr, ticket: Ticket) {
    let limits = shared.limits.get();
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    let (idle, io) = (ms(limits.idle_timeout_ms), ms(limits.io_timeout_ms));
    let deadline = tokio::time::Instant::now() + ms(limits.max_connection_duration_ms);
    // The listen address it came to, for the rules' `listen` selector.
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0));
    let (rd, wr) = stream.into_split();
    // Pipelined queries arrive together: read them with one system call.
    let mut rd = tokio::io::BufReader::with_capacity(16 * 1024, rd);
    let in_flight = limits.max_in_flight_per_connection as usize;
    // Each answer carries its query's permit until it is written: at most
    // `in_flight` are queued, so queueing one never fails.
    let (answers, to_write) = mpsc::channel::<Pending>(in_flight);
    let (failed_tx, mut write_failed) = oneshot::channel();
    let writer =
        tokio::task::spawn_local(write_answers(wr, to_write, io, shared.clone(), failed_tx));
    let permits = std::sync::Arc::new(Semaphore::new(in_flight));
    let mut buf = Vec::new();
    let mut queries = 0u32;
    let why = loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("never closed"),
            _ = &mut write_failed => break None,
        };
        let read = tokio::select! {
            r = framing::read_message(&mut rd, &mut buf, idle, io, deadline) => r,
            _ = &mut write_failed => break None,
        };
        let len = match read {
            Ok(len) => len,
            Err(e) => break Some(e),
        };
        if buf[2] & 0x80 != 0 {
            // A response sent to a server: not a DNS client.
            break Some(ReadError::Short);
        }
        queries += 1;
        shared.counters.borrow_mut().queries.received += 1;
        handle(&shared, &mut buf, len, (peer, local), &answers, permit);
        if limits.max_queries_per_connection != 0 && queries >= limits.max_queries_per_connection {
            shared.counters.borrow_mut().query_limit_closed += 1;
            break None;
        }
    };
    {
        let mut c = shared.counters.borrow_mut();
        match why {
            Some(ReadError::Idle) => c.idle_closed += 1,
            Some(ReadError::Slow) => c.io_closed += 1,
            Some(ReadError::Expired) => c.duration_closed += 1,
            Some(ReadError::Short) => c.bad_framing += 1,
            Some(ReadError::Closed | ReadError::Io(_)) | None => {}
        }
    }
    // The answers still coming are written (each within its own time
    // bounds), then the connection closes.
    drop(answers);
    let _ = writer.await;
    drop(ticket);
}

/// An answer to write, with the permit of its query.
type Pending = (Vec<u8>, OwnedSemaphorePermit);

/// Decides about one query; the answer (now or later) goes to `answers`.
fn handle(
    shared: &Rc<Shared>,
    buf: &mut [u8],
    len: usize,
    (peer, local): (SocketAddr, SocketAddr),
    answers: &mpsc::Sender<Pending>,
    permit: OwnedSemaphorePermit,
) {
    let who = Peer {
        ip: peer.ip(),
        transport: Transport::Tcp,
        local,
    };
    let verdict = {
        let mut p = shared.pipeline.borrow_mut();
        let mut c = shared.counters.borrow_mut();
        p.decide(buf, len, who, &mut c.pipeline)
    };
    match verdict {
        Verdict::Answer(n) => {
            let _ = answers.try_send((buf[..n].to_vec(), permit));
        }
        Verdict::Drop(reason) => shared.counters.borrow_mut().queries.drop(reason),
        Verdict::Forward {
            backend,
            query,
            cache,
        } => {
            let msg = buf[..len].to_vec();
            let question = buf[HEADER_LEN..query.question_end].to_vec();
            let sent = match shared.upstreams.borrow_mut().as_mut() {
                Some(u) => u.send(usize::from(backend), msg.clone(), &question),
                None => Err(UpstreamError::Failed),
            };
            {
                let mut c = shared.counters.borrow_mut();
                c.pipeline.backend(usize::from(backend)).queries += 1;
            }
            if let Some(b) = shared.pipeline.borrow_mut().backends() {
                b.sent(backend);
            }
            let shared = shared.clone();
            let answers = answers.clone();
            let (timeout, action) = shared.fail_policy();
            tokio::task::spawn_local(async move {
                let started = Instant::now();
                let got = match sent {
                    Ok(a) => a.wait(timeout).await,
                    Err(e) => Err(e),
                };
                if let Some(b) = shared.pipeline.borrow_mut().backends() {
                    b.done(backend);
                }
                let answer = match got {
                    Ok(mut a) => {
                        shared.pipeline.borrow().ttl_clamp().apply(&mut a);
                        {
                            let mut c = shared.counters.borrow_mut();
                            shared.pipeline.borrow().remember(
                                cache,
                                &question,
                                &a,
                                &mut c.pipeline,
                            );
                        }
                        let us = started.elapsed().as_micros() as u64;
                        let mut c = shared.counters.borrow_mut();
                        let bc = c.pipeline.backend(usize::from(backend));
                        bc.replies += 1;
                        bc.observe(us);
                        Some(a)
                    }
                    Err(e) => {
                        {
                            let mut c = shared.counters.borrow_mut();
                            c.backend_failures += 1;
                            if e == UpstreamError::Timeout {
                                c.pipeline.backend(usize::from(backend)).timeouts += 1;
                            }
                        }
                        failure_answer(&shared, msg, action)
                    }
                };
                if let Some(a) = answer {
                    let _ = answers.try_send((a, permit));
                }
            });
        }
    }
}

/// The answer `action` gives a query that could not be forwarded.
fn failure_answer(shared: &Shared, mut msg: Vec<u8>, action: FailAction) -> Option<Vec<u8>> {
    let len = msg.len();
    msg.resize(len + framing::ANSWER_ROOM, 0);
    let Ok(q) = xdpdns_dataplane::dns::parse_query(&msg[..len]) else {
        return None;
    };
    match shared.pipeline.borrow().fail(&mut msg, &q, action) {
        Verdict::Answer(n) => {
            msg.truncate(n);
            Some(msg)
        }
        _ => {
            shared
                .counters
                .borrow_mut()
                .queries
                .drop(DropReason::FailDrop);
            None
        }
    }
}

async fn write_answers(
    mut wr: OwnedWriteHalf,
    mut answers: mpsc::Receiver<Pending>,
    io: Duration,
    shared: Rc<Shared>,
    failed: oneshot::Sender<()>,
) {
    let mut out = Vec::with_capacity(16 * 1024);
    let mut permits = Vec::new();
    while let Some((a, permit)) = answers.recv().await {
        // Every answer ready now goes out in one write.
        out.clear();
        permits.clear();
        let mut n = 0u64;
        let mut next = Some((a, permit));
        while let Some((a, permit)) = next.take() {
            framing::frame_into(&mut out, &a);
            permits.push(permit);
            n += 1;
            if out.len() < 32 * 1024 {
                next = answers.try_recv().ok();
            }
        }
        if !framing::write_all(&mut wr, &out, io).await {
            shared.counters.borrow_mut().io_closed += 1;
            let _ = failed.send(());
            return;
        }
        shared.counters.borrow_mut().queries.answered += n;
    }
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(io, wr.shutdown()).await;
}
