//! DNS over TCP: accepted on the listen addresses (kernel stack) and relayed
//! to a backend of the default pool over TCP — what a client does after a
//! truncated UDP answer. The loader does not interpret DNS: it checks each
//! query's length prefix and header size, and relays bytes; one backend
//! connection per client connection keeps message IDs untouched. Bounded in
//! connections and idle time; bad input closes that connection only.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use xdpdns_common::net::PrefixSet;

use crate::status::TcpStatus;

/// Who may connect, and where TCP queries may go: the default pool's
/// backends and their health.
#[derive(Debug, Clone, Default)]
pub struct TcpBackends {
    /// (address, up) of each member of the default pool.
    pub members: Vec<(SocketAddr, bool)>,
    pub idle_timeout: Duration,
    /// Clients outside the ACL are closed at once (either ACL action: a
    /// TCP client is not a spoofing risk, but the service is not theirs).
    pub acl: PrefixSet,
}

/// What every connection of the relay shares.
struct Relay {
    counters: TcpCounters,
    limit: Arc<Semaphore>,
    backends: watch::Receiver<Arc<TcpBackends>>,
    next: Cell<usize>,
}

impl Relay {
    /// A backend of the default pool for a connection: the next up one.
    fn backend(&self) -> Option<SocketAddr> {
        let b = self.backends.borrow();
        let n = b.members.len();
        for i in 0..n {
            let pos = (self.next.get() + i) % n;
            if let (addr, true) = b.members[pos] {
                self.next.set(pos + 1);
                return Some(addr);
            }
        }
        None
    }
}

/// The TCP listeners, one task each, following the listen addresses.
pub struct Tcp {
    relay: Rc<Relay>,
    listeners: BTreeMap<SocketAddr, JoinHandle<()>>,
}

impl Tcp {
    pub fn new(max_connections: u32, backends: watch::Receiver<Arc<TcpBackends>>) -> Tcp {
        Tcp {
            relay: Rc::new(Relay {
                counters: TcpCounters::default(),
                limit: Arc::new(Semaphore::new(max_connections as usize)),
                backends,
                next: Cell::new(0),
            }),
            listeners: BTreeMap::new(),
        }
    }

    /// Listens on exactly `addrs`: new ones are bound (all before any old
    /// one is closed); removed ones close. On a bind error nothing changes.
    pub fn set_listen(&mut self, addrs: &[SocketAddr]) -> std::io::Result<()> {
        let mut bound = Vec::new();
        for a in addrs.iter().filter(|a| !self.listeners.contains_key(a)) {
            bound.push((*a, bind(*a)?));
        }
        for (a, l) in bound {
            let task = tokio::task::spawn_local(serve(l, self.relay.clone()));
            self.listeners.insert(a, task);
        }
        self.listeners.retain(|a, task| {
            let keep = addrs.contains(a);
            if !keep {
                task.abort();
            }
            keep
        });
        Ok(())
    }

    pub fn status(&self) -> TcpStatus {
        let c = &self.relay.counters;
        TcpStatus {
            accepted: c.accepted.get(),
            refused: c.refused.get(),
            acl_denied: c.acl_denied.get(),
            queries: c.queries.get(),
            bad_input: c.bad_input.get(),
            backend_failures: c.backend_failures.get(),
        }
    }
}

impl Drop for Tcp {
    fn drop(&mut self) {
        for t in self.listeners.values() {
            t.abort();
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// TCP counters, shown by `status`.
#[derive(Debug, Default)]
struct TcpCounters {
    pub accepted: Cell<u64>,
    pub refused: Cell<u64>,
    pub acl_denied: Cell<u64>,
    pub queries: Cell<u64>,
    pub bad_input: Cell<u64>,
    pub backend_failures: Cell<u64>,
}

impl TcpCounters {
    fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
}

/// Binds a TCP listener for `addr` (while privileged: port 53).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = crate::sockets::tcp_listener(addr, 1024).map_err(std::io::Error::other)?;
    TcpListener::from_std(l)
}

async fn serve(listener: TcpListener, relay: Rc<Relay>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                debug!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !relay.backends.borrow().acl.contains(peer.ip()) {
            TcpCounters::bump(&relay.counters.acl_denied);
            drop(client);
            continue;
        }
        let Ok(permit) = relay.limit.clone().try_acquire_owned() else {
            TcpCounters::bump(&relay.counters.refused);
            drop(client);
            continue;
        };
        TcpCounters::bump(&relay.counters.accepted);
        let relay = relay.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = connection(client, &relay).await {
                debug!(%peer, error = %e, "TCP connection closed");
            }
            drop(permit);
        });
    }
}

async fn connection(mut client: TcpStream, shared: &Relay) -> std::io::Result<()> {
    let idle = shared.backends.borrow().idle_timeout;
    let Some(backend) = shared.backend() else {
        TcpCounters::bump(&shared.counters.backend_failures);
        return Ok(());
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
        Ok(Ok(s)) => s,
        _ => {
            TcpCounters::bump(&shared.counters.backend_failures);
            return Ok(());
        }
    };
    let (mut up_read, mut up_write) = upstream.into_split();
    let (mut cl_read, mut cl_write) = client.split();
    // Set when the client misbehaves or idles out: the relay then ends at once.
    let (abort_tx, mut abort_rx) = tokio::sync::watch::channel(false);
    let to_backend = async {
        let mut msg = vec![0u8; 65535];
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(idle, cl_read.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    // The client is done sending: let the answers finish.
                    let _ = up_write.shutdown().await;
                    return Ok::<(), std::io::Error>(());
                }
                Err(_) => {
                    let _ = abort_tx.send(true);
                    return Ok(());
                }
            }
            let n = usize::from(u16::from_be_bytes(len));
            let complete = n >= 12
                && matches!(
                    tokio::time::timeout(idle, cl_read.read_exact(&mut msg[..n])).await,
                    Ok(Ok(_))
                );
            // A query, not a response: QR clear.
            if !complete || msg[2] & 0x80 != 0 {
                TcpCounters::bump(&shared.counters.bad_input);
                let _ = abort_tx.send(true);
                return Ok(());
            }
            TcpCounters::bump(&shared.counters.queries);
            up_write.write_all(&len).await?;
            up_write.write_all(&msg[..n]).await?;
        }
    };
    let to_client = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                r = tokio::time::timeout(idle, up_read.read(&mut buf)) => match r {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => n,
                },
                _ = abort_rx.changed() => break,
            };
            cl_write.write_all(&buf[..n]).await?;
        }
        let _ = cl_write.shutdown().await;
        Ok::<(), std::io::Error>(())
    };
    let (a, b) = tokio::join!(to_backend, to_client);
    a.and(b)
}
