//! Queries to backends over TCP: per backend a few long-lived connections,
//! opened when the first query needs one, each carrying many queries at
//! once (pipelined, RFC 7766 §6.2.1.1). Every query leaves with an ID of
//! its own on its connection, drawn at random; an answer is matched by that
//! ID and by the question byte for byte, given back its client's ID, and
//! delivered in whatever order the backend answers. A connection that fails
//! fails the queries it carries and is replaced on next use.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::{Rc, Weak};
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use xdpdns_dataplane::forward::keys::Draws;

use crate::framing::{self, ReadError};

/// Queries one connection carries at once; more go to another connection
/// or fail.
pub const MAX_PER_CONNECTION: usize = 1024;
/// Queries queued for writing on one connection.
const WRITE_QUEUE: usize = 256;
/// IDs drawn before giving up on a connection that is nearly full.
const ID_DRAWS: usize = 8;

/// Why a forwarded query got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Every connection to the backend is full.
    Busy,
    /// The connection failed (connect, write or read) before the answer.
    Failed,
    /// No answer within the forwarding timeout.
    Timeout,
}

/// What happened on the backend side, for the counters.
#[derive(Debug, Default)]
pub struct UpstreamEvents {
    pub connects: Cell<u64>,
    pub connect_errors: Cell<u64>,
    pub stray: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

struct Pending {
    client_id: u16,
    question: Vec<u8>,
    answer: oneshot::Sender<Vec<u8>>,
}

/// One pipelined connection (or one being opened).
struct Conn {
    queue: mpsc::Sender<Vec<u8>>,
    pending: RefCell<HashMap<u16, Pending>>,
    dead: Cell<bool>,
}

impl Conn {
    fn fail_all(&self) {
        self.dead.set(true);
        // Dropping the senders tells every waiting query.
        self.pending.borrow_mut().clear();
    }
}

/// Connections to one backend.
struct Pool {
    address: SocketAddr,
    source: IpAddr,
    conns: Vec<Option<Rc<Conn>>>,
    next: usize,
}

/// Every backend's pool, in `ForwardSpec` order.
pub struct Upstreams {
    pools: Vec<Pool>,
    io_timeout: Duration,
    events: Rc<UpstreamEvents>,
    draws: Draws,
}

impl Upstreams {
    /// Pools for `backends` ((address, our source) each), `per_backend`
    /// connections each; nothing is opened yet.
    pub fn new(
        backends: &[(SocketAddr, IpAddr)],
        per_backend: u32,
        io_timeout: Duration,
        events: Rc<UpstreamEvents>,
        draws: Draws,
    ) -> Upstreams {
        Upstreams {
            pools: backends
                .iter()
                .map(|(address, source)| Pool {
                    address: *address,
                    source: *source,
                    conns: vec![None; per_backend.max(1) as usize],
                    next: 0,
                })
                .collect(),
            io_timeout,
            events,
            draws,
        }
    }

    /// Sends `msg` (a query, its client's ID in front; `question` its
    /// question section) to backend `b`; [`Answer::wait`] gets the answer
    /// with the client's ID restored. Never waits: a full backend is
    /// [`UpstreamError::Busy`].
    pub fn send(
        &mut self,
        b: usize,
        mut msg: Vec<u8>,
        question: &[u8],
    ) -> Result<Answer, UpstreamError> {
        let io = self.io_timeout;
        let events = self.events.clone();
        let pool = self.pools.get_mut(b).ok_or(UpstreamError::Failed)?;
        let n = pool.conns.len();
        for _ in 0..n {
            let slot = pool.next % n;
            pool.next = pool.next.wrapping_add(1);
            let conn = match &pool.conns[slot] {
                Some(c) if !c.dead.get() => c.clone(),
                _ => {
                    let c = open(pool.address, pool.source, io, events.clone());
                    pool.conns[slot] = Some(c.clone());
                    c
                }
            };
            if conn.pending.borrow().len() >= MAX_PER_CONNECTION {
                continue;
            }
            let Some(id) = (0..ID_DRAWS)
                .map(|_| self.draws.draw() as u16)
                .find(|id| !conn.pending.borrow().contains_key(id))
            else {
                continue;
            };
            let client_id = u16::from_be_bytes([msg[0], msg[1]]);
            msg[0..2].copy_from_slice(&id.to_be_bytes());
            let (tx, rx) = oneshot::channel();
            if conn.queue.try_send(msg).is_err() {
                return Err(UpstreamError::Busy);
            }
            conn.pending.borrow_mut().insert(
                id,
                Pending {
                    client_id,
                    question: question.to_vec(),
                    answer: tx,
                },
            );
            return Ok(Answer {
                rx: Some(rx),
                conn: Rc::downgrade(&conn),
                id,
                armed: true,
            });
        }
        Err(UpstreamError::Busy)
    }

    /// Open connections now (for the status).
    pub fn open(&self) -> usize {
        self.pools
            .iter()
            .flat_map(|p| &p.conns)
            .filter(|c| c.as_ref().is_some_and(|c| !c.dead.get()))
            .count()
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        // A reconfiguration replaces the pools: their connections end.
        for c in self.pools.iter().flat_map(|p| &p.conns).flatten() {
            c.fail_all();
        }
    }
}

/// A query in flight on a backend connection.
pub struct Answer {
    rx: Option<oneshot::Receiver<Vec<u8>>>,
    conn: Weak<Conn>,
    id: u16,
    /// Still in the connection's table (not answered, not failed).
    armed: bool,
}

impl Answer {
    /// The answer, within `timeout`. A query given up leaves nothing
    /// behind on its connection.
    pub async fn wait(mut self, timeout: Duration) -> Result<Vec<u8>, UpstreamError> {
        let Some(rx) = self.rx.take() else {
            return Err(UpstreamError::Failed);
        };
        let r = tokio::time::timeout(timeout, rx).await;
        // Answered or failed, the entry is gone already (and its ID may
        // be someone else's by now): only a timeout leaves one to remove.
        self.armed = r.is_err();
        match r {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err(UpstreamError::Failed),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if self.armed
            && let Some(c) = self.conn.upgrade()
        {
            c.pending.borrow_mut().remove(&self.id);
        }
    }
}

/// Starts opening a connection to `address` from `source`; queries can
/// queue on it at once.
fn open(address: SocketAddr, source: IpAddr, io: Duration, events: Rc<UpstreamEvents>) -> Rc<Conn> {
    let (queue, rx) = mpsc::channel(WRITE_QUEUE);
    let conn = Rc::new(Conn {
        queue,
        pending: RefCell::new(HashMap::new()),
        dead: Cell::new(false),
    });
    let c = conn.clone();
    tokio::task::spawn_local(async move {
        let stream = match connect(address, source, io).await {
            Ok(s) => {
                bump(&events.connects);
                s
            }
            Err(_) => {
                bump(&events.connect_errors);
                c.fail_all();
                return;
            }
        };
        let (rd, wr) = stream.into_split();
        let reader = tokio::task::spawn_local(read_answers(rd, c.clone(), events));
        write_queries(wr, rx, io, &c).await;
        c.fail_all();
        reader.abort();
    });
    conn
}

async fn connect(
    address: SocketAddr,
    source: IpAddr,
    io: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let s = if address.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if source.is_ipv6() == address.is_ipv6() {
        s.bind(SocketAddr::new(source, 0))?;
    }
    let stream = tokio::time::timeout(io, s.connect(address))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn write_queries(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    io: Duration,
    conn: &Conn,
) {
    let mut out = Vec::with_capacity(16 * 1024);
    while let Some(msg) = rx.recv().await {
        // Every query queued now goes out in one write.
        out.clear();
        framing::frame_into(&mut out, &msg);
        while out.len() < 32 * 1024 {
            match rx.try_recv() {
                Ok(m) => framing::frame_into(&mut out, &m),
                Err(_) => break,
            }
        }
        if conn.dead.get() || !framing::write_all(&mut wr, &out, io).await {
            return;
        }
    }
}

/// Reads answers until the connection ends; each goes to its query.
async fn read_answers(rd: OwnedReadHalf, conn: Rc<Conn>, events: Rc<UpstreamEvents>) {
    let mut rd = tokio::io::BufReader::with_capacity(16 * 1024, rd);
    let mut buf = Vec::new();
    // An answer may take the backend long; the query's own timeout bounds
    // how long anyone waits for it.
    let forever = Duration::from_secs(24 * 3600);
    let far = tokio::time::Instant::now() + forever;
    loop {
        let len = match framing::read_message(&mut rd, &mut buf, forever, forever, far).await {
            Ok(len) => len,
            Err(ReadError::Short) => {
                bump(&events.stray);
                break;
            }
            Err(_) => break,
        };
        let msg = &mut buf[..len];
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let pending = conn.pending.borrow_mut().remove(&id);
        let Some(p) = pending else {
            bump(&events.stray);
            continue;
        };
        let question_ok = msg[2] & 0x80 != 0
            && (msg.get(12..12 + p.question.len()) == Some(&p.question[..])
                || (msg[4..6] == [0, 0] && matches!(msg[3] & 0x0f, 1 | 2 | 4 | 5)));
        if !question_ok {
            // Not the answer to this query: it stays for the real one.
            bump(&events.stray);
            conn.pending.borrow_mut().insert(id, p);
            continue;
        }
        msg[0..2].copy_from_slice(&p.client_id.to_be_bytes());
        let _ = p.answer.send(msg.to_vec());
    }
    conn.fail_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn query(id: u16, name: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        let question: Vec<u8> = [name, &[0, 1, 0, 1]].concat();
        q.extend_from_slice(&question);
        (q, question)
    }

    /// A backend that reads `n` queries, then answers them in reverse order
    /// (plus one stray answer first).
    async fn reversing_backend(l: tokio::net::TcpListener, n: usize) {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        for _ in 0..n {
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.unwrap();
            let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut m).await.unwrap();
            got.push(m);
        }
        let mut stray = got[0].clone();
        stray[0] ^= 0xff;
        stray[1] ^= 0xff;
        stray[2] |= 0x80;
        for m in std::iter::once(stray).chain(got.into_iter().rev()) {
            let mut a = m;
            a[2] |= 0x80;
            s.write_all(&(a.len() as u16).to_be_bytes()).await.unwrap();
            s.write_all(&a).await.unwrap();
        }
        // Keep the connection open until the test ends.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipelined_queries_are_answered_out_of_order_with_their_ids() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                tokio::task::spawn_local(reversing_backend(l, 3));
                let events = Rc::new(UpstreamEvents::default());
                let mut up = Upstreams::new(
                    &[(addr, "127.0.0.1".parse().unwrap())],
                    1,
                    Duration::from_secs(2),
                    events.clone(),
                    Draws::new().unwrap(),
                );
                let mut rxs = Vec::new();
                for (id, name) in [
                    (0x1111, &b"\x01a"[..]),
                    (0x2222, b"\x01b"),
                    (0x3333, b"\x01c"),
                ] {
                    let (q, question) = query(id, name);
                    rxs.push((id, question.clone(), up.send(0, q, &question).unwrap()));
                }
                for (id, question, rx) in rxs {
                    let a = rx.wait(Duration::from_secs(5)).await.expect("answered");
                    assert_eq!(
                        u16::from_be_bytes([a[0], a[1]]),
                        id,
                        "the client's ID restored"
                    );
                    assert_eq!(&a[12..], &question[..]);
                }
                assert_eq!(events.connects.get(), 1, "one connection carried all three");
                assert_eq!(events.stray.get(), 1, "the stray answer was counted");
                assert_eq!(up.open(), 1);
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_backend_that_is_not_there_fails_the_query() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // A port nobody listens on.
                let addr = {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    l.local_addr().unwrap()
                };
                let events = Rc::new(UpstreamEvents::default());
                let mut up = Upstreams::new(
                    &[(addr, "127.0.0.1".parse().unwrap())],
                    2,
                    Duration::from_secs(2),
                    events.clone(),
                    Draws::new().unwrap(),
                );
                let (q, question) = query(7, b"\x01a");
                let rx = up.send(0, q, &question).unwrap();
                assert_eq!(
                    rx.wait(Duration::from_secs(5)).await.unwrap_err(),
                    UpstreamError::Failed,
                    "the failed connection drops the query"
                );
                assert_eq!(events.connect_errors.get(), 1);
                assert_eq!(up.open(), 0);
                assert_eq!(
                    up.send(5, vec![0; 12], &[]).err(),
                    Some(UpstreamError::Failed)
                );
            })
            .await;
    }
}
