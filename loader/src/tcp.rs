//! DNS over TCP: accepted on the listen addresses (kernel stack) and relayed
//! to a backend of the default pool over TCP — what a client does after a
//! truncated UDP answer. The loader does not interpret DNS: it checks each
//! query's length prefix and header size, and relays bytes; one backend
//! connection per client connection keeps message IDs untouched. Bounded in
//! connections and idle time; bad input closes that connection only.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::state::Shared;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// TCP counters, shown by `status`.
#[derive(Debug, Default)]
pub struct TcpCounters {
    pub accepted: Cell<u64>,
    pub refused: Cell<u64>,
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
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    s.set_reuseaddr(true)?;
    freebind(&s, addr.is_ipv6())?;
    s.bind(addr)?;
    s.listen(1024)
}

/// IP_FREEBIND, as for the UDP sockets: the address may come later.
fn freebind(s: &TcpSocket, v6: bool) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    if v6 {
        nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::Ipv6V6Only, &true)?;
    }
    nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::IpFreebind, &true)?;
    Ok(())
}

pub async fn serve(listener: TcpListener, shared: Rc<Shared>, limit: std::sync::Arc<Semaphore>) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            TcpCounters::bump(&shared.tcp.refused);
            drop(client);
            continue;
        };
        TcpCounters::bump(&shared.tcp.accepted);
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = relay(client, &shared).await {
                debug!(%peer, error = %e, "TCP connection closed");
            }
            drop(permit);
        });
    }
}

async fn relay(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let idle = Duration::from_millis(u64::from(shared.config().forwarding.tcp_idle_timeout_ms));
    let Some(backend) = shared.tcp_backend() else {
        TcpCounters::bump(&shared.tcp.backend_failures);
        return Ok(());
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
        Ok(Ok(s)) => s,
        _ => {
            TcpCounters::bump(&shared.tcp.backend_failures);
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
                TcpCounters::bump(&shared.tcp.bad_input);
                let _ = abort_tx.send(true);
                return Ok(());
            }
            TcpCounters::bump(&shared.tcp.queries);
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
