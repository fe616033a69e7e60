//! The TCP worker's serving code on loopback, without a loader: local
//! answers through the pipeline, pipelining, and the limits.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xdpdns_common::config::{Config, TcpLimits};
use xdpdns_common::ipc::workers::TcpConfig;
use xdpdns_tcp::server::{self, Shared};

fn config(limits: impl FnOnce(&mut TcpLimits)) -> TcpConfig {
    let c = Config::from_toml(
        "[xdp]\ninterface = \"eth0\"\n[[listen]]\naddress = \"127.0.0.1:53\"\n\
         [[rule]]\nqname_suffix = \"blocked.test.\"\naction = \"nxdomain\"\n",
    )
    .unwrap();
    let mut l = c.live.tcp;
    limits(&mut l);
    TcpConfig {
        answer: c.live.answer_spec(),
        forward: None,
        limits: l,
        listen: Vec::new(),
        descriptors: 0,
    }
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut f = (q.len() as u16).to_be_bytes().to_vec();
    f.extend(q);
    f
}

async fn answer(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut m).await?;
    Ok(m)
}

/// Runs `body` against a worker serving `cfg` on a loopback port.
fn with_worker<F>(cfg: TcpConfig, body: impl FnOnce(std::net::SocketAddr, std::rc::Rc<Shared>) -> F)
where
    F: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let shared = Shared::new(&cfg).unwrap();
        let _task = server::serve_listener(&shared, l).unwrap();
        body(addr, shared).await;
    });
}

#[test]
fn pipelined_queries_get_the_pipelines_answers() {
    with_worker(config(|_| {}), |addr, shared| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut all = query(1, "a.blocked.test");
        all.extend(query(2, "open.test"));
        all.extend(query(3, "b.blocked.test"));
        s.write_all(&all).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            let a = answer(&mut s).await.unwrap();
            got.push((u16::from_be_bytes([a[0], a[1]]), a[3] & 0x0f));
        }
        got.sort();
        assert_eq!(
            got,
            [(1, 3), (2, 5), (3, 3)],
            "NXDOMAIN by rule, REFUSED by default"
        );
        let c = shared.snapshot();
        assert_eq!((c.queries.received, c.queries.answered), (3, 3));
        assert_eq!(c.pipeline.rule_hits, [2, 1]);
    });
}

#[test]
fn a_client_over_its_share_is_closed_and_others_are_served() {
    with_worker(
        config(|l| {
            l.max_connections_per_client = 2;
        }),
        |addr, shared| async move {
            let a = TcpStream::connect(addr).await.unwrap();
            let b = TcpStream::connect(addr).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 4];
            let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
                .await
                .expect("closed at once")
                .unwrap_or(0);
            assert_eq!(n, 0, "the third connection from one address is closed");
            assert_eq!(shared.snapshot().refused_client, 1);
            drop((a, b));
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut d = TcpStream::connect(addr).await.unwrap();
            d.write_all(&query(9, "x.test")).await.unwrap();
            assert_eq!(
                answer(&mut d).await.unwrap()[3] & 0x0f,
                5,
                "places given back"
            );
        },
    );
}

#[test]
fn idle_slow_and_over_limit_connections_end_counted() {
    with_worker(
        config(|l| {
            l.idle_timeout_ms = 200;
            l.io_timeout_ms = 200;
            l.max_queries_per_connection = 2;
        }),
        |addr, shared| async move {
            // Idle: nothing sent.
            let mut idle = TcpStream::connect(addr).await.unwrap();
            // Slow: half a length.
            let mut slow = TcpStream::connect(addr).await.unwrap();
            slow.write_all(&[0]).await.unwrap();
            // Two queries allowed, the connection then ends after answering.
            let mut limited = TcpStream::connect(addr).await.unwrap();
            let mut two = query(1, "a.test");
            two.extend(query(2, "b.test"));
            two.extend(query(3, "c.test"));
            limited.write_all(&two).await.unwrap();
            assert!(answer(&mut limited).await.is_ok());
            assert!(answer(&mut limited).await.is_ok());
            assert!(
                answer(&mut limited).await.is_err(),
                "the third is not answered"
            );
            let mut buf = [0u8; 1];
            for s in [&mut idle, &mut slow] {
                let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                    .await
                    .expect("closed")
                    .unwrap_or(0);
                assert_eq!(n, 0);
            }
            // A response sent as a query ends its connection too.
            let mut bad = TcpStream::connect(addr).await.unwrap();
            let mut q = query(4, "d.test");
            q[4] |= 0x80;
            bad.write_all(&q).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(3), bad.read(&mut buf))
                .await
                .expect("closed")
                .unwrap_or(0);
            assert_eq!(n, 0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let c = shared.snapshot();
            assert_eq!(
                (
                    c.idle_closed,
                    c.io_closed,
                    c.query_limit_closed,
                    c.bad_framing
                ),
                (1, 1, 1, 1),
                "{c:?}"
            );
            assert_eq!(c.open, 0, "every place given back");
        },
    );
}
