//! DNS over TCP and the metrics endpoint, served by unprivileged workers:
//! the loader listens on no network socket, the workers hold no
//! capability, the same pipeline answers TCP as UDP, and what one TCP
//! client may hold is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use xdpdns_netns_tests::*;

/// A DNS query message for `name` (type A), ID `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn framed(msg: &[u8]) -> Vec<u8> {
    let mut f = (msg.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(msg);
    f
}

fn read_framed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut m)?;
    Ok(m)
}

/// Listening TCP sockets in the server namespace: (local address, pid).
fn tcp_listeners(lab: &Lab) -> Vec<(String, u32)> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, "ss", "-Hltnp"])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|l| {
            let local = l.split_whitespace().nth(3).unwrap_or("").to_string();
            l.split("pid=")
                .skip(1)
                .filter_map(|p| p.split(',').next()?.parse().ok())
                .map(|pid| (local.clone(), pid))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
#[ignore = "needs root: run by make test"]
fn tcp_and_metrics_are_served_by_workers_without_privileges() -> anyhow::Result<()> {
    let lab = Lab::new("tcpworkers")?;
    let cfg = lab.config(
        "w",
        "[metrics]\naddress = \"127.0.0.1:9153\"\n[tcp]\nworkers = 2\n",
    );
    let server = lab.start("w", &cfg)?;
    let listeners = wait_for(Duration::from_secs(10), "the workers' listeners", || {
        let l = tcp_listeners(&lab);
        (l.iter().filter(|(a, _)| a.ends_with(":53")).count() >= 4
            && l.iter().any(|(a, _)| a == "127.0.0.1:9153"))
        .then_some(l)
    })?;
    let loader = server.pid();
    assert!(
        listeners.iter().all(|(_, pid)| *pid != loader),
        "the loader listens on no TCP port: {listeners:?}"
    );
    let mut pids: Vec<u32> = listeners.iter().map(|(_, p)| *p).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(
        pids.len(),
        3,
        "two TCP workers and the exporter: {listeners:?}"
    );
    for pid in pids {
        let uid = proc_status(pid, "Uid").unwrap_or_default();
        assert!(
            uid.split_whitespace()
                .all(|u| u == lab.users.tcp_uid.to_string()),
            "pid {pid} runs as the TCP user: {uid}"
        );
        assert_eq!(
            proc_status(pid, "CapEff").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(
            proc_status(pid, "CapPrm").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(proc_status(pid, "NoNewPrivs").as_deref(), Some("1"));
        assert_eq!(proc_status(pid, "Seccomp").as_deref(), Some("2"));
    }
    // Both serve.
    assert_eq!(
        lab.kdig(&["+tcp", &format!("@{SERVER_V4}"), "a.test"]),
        "REFUSED"
    );
    let text = lab.metrics_until("127.0.0.1:9153", "the TCP query", |t| {
        series(t, "xdpdns_tcp_events_total{event=\"query\"}").unwrap_or(0.0) >= 1.0
    })?;
    assert_eq!(
        series(&text, "xdpdns_worker_up{worker=\"tcp-1\"}"),
        Some(1.0),
        "{text}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn tcp_gets_the_same_answers_as_udp_without_backends() -> anyhow::Result<()> {
    let lab = Lab::new("tcplocal")?;
    let cfg = lab.config(
        "l",
        "[[rule]]\nqname_suffix = \"blocked.test.\"\naction = \"nxdomain\"\n",
    );
    let server = lab.start("l", &cfg)?;
    for (v, transport) in [
        (SERVER_V4, "+tcp"),
        (SERVER_V6, "+tcp"),
        (SERVER_V4, "+notcp"),
    ] {
        let at = format!("@{v}");
        assert_eq!(
            lab.kdig(&[transport, &at, "x.blocked.test"]),
            "NXDOMAIN",
            "{transport} {v}"
        );
        assert_eq!(
            lab.kdig(&[transport, &at, "open.test"]),
            "REFUSED",
            "{transport} {v}"
        );
    }
    // The TCP worker's counts and the dataplanes' (the UDP query) reach
    // the loader on their own schedules: wait for both.
    let s = server.wait_status("TCP answers and rule hits counted", |s| {
        s["tcp"]["answered"].as_u64().unwrap_or(0) >= 4
            && s["rules"][0]["hits"].as_u64().unwrap_or(0) >= 3
    })?;
    assert_eq!(
        s["rules"][0]["hits"].as_u64(),
        Some(3),
        "rule hits over UDP and TCP: {s:#}"
    );
    Ok(())
}

/// A TCP backend in the client namespace: reads `n` queries on one
/// connection, then answers them in reverse order (NXDOMAIN).
fn reversing_backend(
    lab: &Lab,
    addr: &str,
    n: usize,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let addr: SocketAddr = addr.parse()?;
    let l = lab.in_ns(false, || Ok(std::net::TcpListener::bind(addr)?))?;
    Ok(std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = Vec::new();
        while got.len() < n {
            got.push(read_framed(&mut s)?);
        }
        for mut m in got.into_iter().rev() {
            m[2] |= 0x80;
            m[3] = 3;
            s.write_all(&framed(&m))?;
        }
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }))
}

#[test]
#[ignore = "needs root: run by make test"]
fn pipelined_queries_are_forwarded_together_and_answered_out_of_order() -> anyhow::Result<()> {
    let lab = Lab::new("tcppipe")?;
    lab.client_addr("192.0.2.30/24", CLIENT_IF)?;
    // The health check goes over UDP to a port nobody answers: keep the
    // backend up by configuration (a long interval, so no verdict yet).
    let backend = reversing_backend(&lab, "192.0.2.30:53", 3)?;
    let cfg = lab.config(
        "p",
        "[[backend]]\naddress = \"192.0.2.30:53\"\n[backend.health]\ninterval_ms = 600000\n\
         [tcp]\nbackend_connections = 1\n",
    );
    let _server = lab.start("p", &cfg)?;
    let answers = lab.in_ns(false, || {
        let mut s = TcpStream::connect((SERVER_V4, 53))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut all = Vec::new();
        for (id, name) in [
            (0x0a01, "one.test"),
            (0x0a02, "two.test"),
            (0x0a03, "three.test"),
        ] {
            all.extend(framed(&query(id, name)));
        }
        s.write_all(&all)?;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(read_framed(&mut s)?);
        }
        Ok(got)
    })?;
    backend.join().expect("backend")?;
    let ids: Vec<u16> = answers
        .iter()
        .map(|a| u16::from_be_bytes([a[0], a[1]]))
        .collect();
    assert_eq!(
        ids,
        [0x0a03, 0x0a02, 0x0a01],
        "answered as the backend answered"
    );
    for a in &answers {
        assert_eq!(a[3] & 0x0f, 3, "the backend's NXDOMAIN");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn one_client_cannot_take_tcp_or_udp_from_the_others() -> anyhow::Result<()> {
    let (lab, _knot) = {
        let lab = Lab::new("tcpabuse")?;
        lab.client_addr("192.0.2.10/24", CLIENT_IF)?;
        lab.client_addr("192.0.2.40/24", CLIENT_IF)?;
        let c = lab.client_ns.clone();
        let knot = lab.knot(&c, "b", &["192.0.2.10@53"], 0)?;
        (lab, knot)
    };
    let cfg = lab.config(
        "a",
        "[[backend]]\naddress = \"192.0.2.10:53\"\n[backend.health]\nqname = \"www.example.test.\"\n\
         interval_ms = 200\n[tcp]\nmax_connections_per_client = 16\nio_timeout_ms = 1000\n\
         idle_timeout_ms = 8000\n",
    );
    let server = lab.start("a", &cfg)?;
    server.wait_status("backend up", |s| s["backends"][0]["up"] == true)?;
    // 2,000 connections from one address, each sending a query now and then.
    let hog = lab.in_ns(false, || {
        let mut conns = Vec::new();
        for _ in 0..2000 {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::from(([192, 0, 2, 40], 0)).into())?;
            if s.connect(&SocketAddr::from(([192, 0, 2, 1], 53)).into())
                .is_ok()
            {
                conns.push(TcpStream::from(s));
            }
        }
        Ok(conns)
    })?;
    for (i, c) in hog.iter().enumerate().take(200) {
        let mut c: &TcpStream = c;
        let _ = c.write_all(&framed(&query(i as u16, "www.example.test")));
    }
    let s = server.wait_status("the hog capped", |s| {
        s["tcp"]["refused_client"].as_u64().unwrap_or(0) >= 1900
    })?;
    assert!(
        s["tcp"]["open"].as_u64().unwrap_or(99) <= 16,
        "{:#}",
        s["tcp"]
    );
    // Another client is still served, over TCP and UDP; health is intact.
    let out = lab.kdig_output(&["+tcp", &format!("@{SERVER_V4}"), "www.example.test"]);
    assert!(out.contains("NOERROR") && out.contains(ZONE_A), "{out}");
    for _ in 0..5 {
        assert_eq!(
            lab.kdig(&[&format!("@{SERVER_V4}"), "www.example.test"]),
            "NOERROR"
        );
    }
    let s = server.status()?;
    assert_eq!(s["backends"][0]["up"], true, "{s:#}");
    let out = server.cli(&["restart-queue", "0"]);
    assert!(out.status.success(), "{out:?}");
    drop(hog);

    // A slowloris (half a length prefix) and a zero-window reader (queries,
    // never reading an answer) are cut by the I/O timeout.
    let slow = lab.in_ns(false, || {
        let mut s = TcpStream::connect((SERVER_V4, 53))?;
        s.write_all(&[0])?;
        Ok(s)
    })?;
    let greedy = lab.in_ns(false, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_recv_buffer_size(1024)?;
        s.connect(&SocketAddr::from(([192, 0, 2, 1], 53)).into())?;
        let mut s = TcpStream::from(s);
        let q = framed(&query(1, "big.example.test"));
        for _ in 0..3000 {
            if s.write_all(&q).is_err() {
                break;
            }
        }
        Ok(s)
    })?;
    let started = Instant::now();
    let s = server.wait_status("both cut", |s| {
        s["tcp"]["io_closed"].as_u64().unwrap_or(0) >= 2
    })?;
    assert!(started.elapsed() < Duration::from_secs(8), "{:#}", s["tcp"]);
    drop((slow, greedy));
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_tcp_worker_killed_under_tcp_load_is_replaced_and_udp_loses_nothing() -> anyhow::Result<()> {
    let lab = Lab::new("tcpkill")?;
    let server = lab.start("k", &lab.config("k", ""))?;
    let pid = wait_for(Duration::from_secs(10), "the TCP worker", || {
        server.status().ok()?["tcp"]["workers"][0]["pid"].as_u64()
    })?;
    let queries = lab.dir.join("dnsperf.txt");
    std::fs::write(&queries, "a.test A\nb.test AAAA\n")?;
    let tcp_load = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client_ns,
            "dnsperf",
            "-m",
            "tcp",
            "-s",
            SERVER_V4,
        ])
        .args(["-l", "3", "-c", "4", "-q", "16", "-d"])
        .arg(&queries)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let gun = lab.kxdpgun(5000, 3, SERVER_V4)?;
    std::thread::sleep(Duration::from_millis(800));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let load = Lab::kxdpgun_result(gun)?;
    let tcp = tcp_load.wait_with_output()?;
    assert!(
        load.received * 1000 >= load.sent * 995,
        "UDP untouched by a TCP worker's death: {load:?}"
    );
    let text = String::from_utf8_lossy(&tcp.stdout);
    assert!(text.contains("Queries completed:"), "TCP load ran: {text}");
    let s = server.wait_status("the worker replaced", |s| {
        s["tcp"]["workers"][0]["restarts"] == 1 && s["tcp"]["workers"][0]["running"] == true
    })?;
    assert_ne!(s["tcp"]["workers"][0]["pid"].as_u64(), Some(pid));
    assert_eq!(
        lab.kdig(&["+tcp", &format!("@{SERVER_V4}"), "a.test"]),
        "REFUSED"
    );
    for q in s["queues"].as_array().unwrap() {
        assert_eq!(q["restarts"], 0, "no dataplane touched: {s:#}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn dnsperf_over_tcp_is_answered() -> anyhow::Result<()> {
    let lab = Lab::new("tcpperf")?;
    let _server = lab.start("d", &lab.config("d", ""))?;
    let queries = lab.dir.join("dnsperf.txt");
    std::fs::write(&queries, "a.test A\nb.test AAAA\nc.test MX\n")?;
    let out = lab.client(
        "dnsperf",
        &[
            "-m",
            "tcp",
            "-s",
            SERVER_V4,
            "-d",
            queries.to_str().unwrap(),
            "-l",
            "3",
            "-c",
            "8",
            "-q",
            "64",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let grab = |key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let sent = grab("Queries sent:");
    let done = grab("Queries completed:");
    assert!(sent > 1000.0, "{text}");
    assert!(done >= sent * 0.99, "answered over TCP under load: {text}");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn the_control_socket_takes_no_paths_and_checks_who_asks() -> anyhow::Result<()> {
    let lab = Lab::new("control")?;
    let server = lab.start("c", &lab.config("c", ""))?;
    let sock = lab.runtime_dir.join("c").join("control.sock");
    let ask = |line: &str| -> anyhow::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
        s.write_all(line.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let out = ask("{\"command\":\"reload\",\"path\":\"/etc/shadow\"}\n")?;
    assert!(
        out.contains("bad request") && !out.contains("root:"),
        "{out}"
    );
    let out = ask("{\"command\":\"reload\"}\n")?;
    assert!(out.contains("done"), "{out}");
    // Someone outside the groups: the socket refuses them.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin("xdpdns"))
        .args(["status", "--config"])
        .arg(&server.config)
        .output()?;
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ermission denied") || err.contains("cannot reach"),
        "{err}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_forbidden_system_call_kills_a_tcp_worker_and_it_is_restarted() -> anyhow::Result<()> {
    let lab = Lab::new("tcpseccomp")?;
    let server = lab.start("s", &lab.config("s", ""))?;
    let pid = wait_for(Duration::from_secs(10), "the TCP worker running", || {
        let s = server.status().ok()?;
        (s["tcp"]["workers"][0]["running"] == true)
            .then(|| s["tcp"]["workers"][0]["pid"].as_u64())
            .flatten()
    })?;
    // Test builds make SIGUSR2 call execve(2), which the filter forbids.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )?;
    let s = server.wait_status("the worker killed and replaced", |s| {
        s["tcp"]["workers"][0]["restarts"] == 1 && s["tcp"]["workers"][0]["running"] == true
    })?;
    let why = s["tcp"]["workers"][0]["last_exit"].as_str().unwrap_or("");
    assert!(why.contains("signal 31"), "killed by SIGSYS: {why}");
    assert_eq!(
        lab.kdig(&["+tcp", &format!("@{SERVER_V4}"), "a.test"]),
        "REFUSED"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn only_allowed_scrapers_get_metrics() -> anyhow::Result<()> {
    let lab = Lab::new("scrape")?;
    let get = |lab: &Lab| -> anyhow::Result<String> {
        lab.in_ns(false, || {
            let mut c = TcpStream::connect((SERVER_V4, 9153))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut t = String::new();
            let _ = c.read_to_string(&mut t);
            Ok(t)
        })
    };
    let cfg = |allow: &str| {
        lab.config(
            "m",
            &format!("[metrics]\naddress = \"{SERVER_V4}:9153\"\n{allow}"),
        )
    };
    let mut server = lab.start("m", &cfg(""))?;
    wait_for(Duration::from_secs(10), "the exporter", || {
        tcp_listeners(&lab)
            .iter()
            .any(|(a, _)| a.ends_with(":9153"))
            .then_some(())
    })?;
    assert_eq!(
        get(&lab)?,
        "",
        "loopback only by default: the lab client is closed at once"
    );
    server.stop()?;
    let _server = lab.start("m", &cfg("allow = [\"192.0.2.0/24\"]\n"))?;
    wait_for(Duration::from_secs(10), "the exporter", || {
        tcp_listeners(&lab)
            .iter()
            .any(|(a, _)| a.ends_with(":9153"))
            .then_some(())
    })?;
    let text = wait_for(Duration::from_secs(10), "a snapshot", || {
        get(&lab).ok().filter(|t| t.contains("xdpdns_ready"))
    })?;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    Ok(())
}
