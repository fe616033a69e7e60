//! xdpdns as a load balancer: queries forwarded to real DNS servers over
//! AF_XDP and over sockets, with health checks, MAC resolution and the
//! in-flight table shared by all queues.

use std::time::Duration;

use xdpdns_netns_tests::*;

const BACKEND_V4: &str = "192.0.2.10";
const BACKEND_V6: &str = "2001:db8::10";

fn backend_lab(test: &str) -> anyhow::Result<(Lab, Knot)> {
    let lab = Lab::new(test)?;
    lab.client_addr(&format!("{BACKEND_V4}/24"), CLIENT_IF)?;
    lab.client_addr(&format!("{BACKEND_V6}/64"), CLIENT_IF)?;
    let c = lab.client_ns.clone();
    let knot = lab.knot(
        &c,
        "b1",
        &[&format!("{BACKEND_V4}@53"), &format!("{BACKEND_V6}@53")],
        0,
    )?;
    Ok((lab, knot))
}

fn backend(addr: &str, extra: &str) -> String {
    format!(
        "[[backend]]\naddress = \"{addr}\"\n{extra}\n[backend.health]\nqname = \"www.example.test.\"\ninterval_ms = 200\n"
    )
}

fn answer_has(out: &str, data: &str) -> bool {
    out.contains("NOERROR")
        && out
            .lines()
            .any(|l| l.contains("ANSWER SECTION") || l.contains(data))
        && out.contains(data)
}

#[test]
#[ignore = "needs root: run by make test"]
fn forwards_over_af_xdp_from_both_families_to_a_real_server() -> anyhow::Result<()> {
    let (lab, _knot) = backend_lab("fwdxsk")?;
    let cfg = lab.config("f", &backend(&format!("{BACKEND_V4}:53"), ""))
        + "[metrics]\naddress = \"127.0.0.1:9153\"\n";
    let server = lab.start("f", &cfg)?;
    server.wait_status("backend up with a MAC", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["mac"].is_string()
    })?;
    for i in 0..10 {
        let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "www.example.test", "A"]);
        assert!(answer_has(&out, ZONE_A), "query {i} over IPv4:\n{out}");
        let out = lab.kdig_output(&[&format!("@{SERVER_V6}"), "www.example.test", "AAAA"]);
        assert!(
            answer_has(&out, ZONE_AAAA),
            "query {i} over IPv6 (to an IPv4 backend):\n{out}"
        );
    }
    let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "nope.example.test", "A"]);
    assert!(
        out.contains("NXDOMAIN"),
        "the backend's exact answer:\n{out}"
    );
    // Each queue reports on its own clock, and a reply may land on a queue
    // other than its query's: wait until every count is in, so that one
    // queue's fresh report is not read beside another's stale one.
    let s = server.wait_status(
        "21 queries and 21 replies, all 42 over AF_XDP, nothing in flight",
        |s| {
            s["backends"][0]["queries"].as_u64().unwrap_or(0) >= 21
                && s["backends"][0]["replies"].as_u64().unwrap_or(0) >= 21
                && total(s, "xsk", "received") >= 42
                && s["totals"]["forward"]["in_flight"] == 0
        },
    )?;
    assert_eq!(s["totals"]["forward"]["stray_replies"], 0, "{s:#}");
    // Per-backend metrics, with the latency histogram.
    let value_in = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let text = lab.metrics_until("127.0.0.1:9153", "21 replies", |t| {
        value_in(t, "xdpdns_backend_replies_total{") >= 21
    })?;
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert!(value("xdpdns_backend_replies_total{") >= 21, "{text}");
    assert!(
        value("xdpdns_backend_latency_seconds_count{") >= 21,
        "{text}"
    );
    assert!(
        text.contains("xdpdns_backend_latency_seconds_bucket{"),
        "{text}"
    );
    assert_eq!(value("xdpdns_backend_up{"), 1, "{text}");
    Ok(())
}

/// An IPv6 backend over AF_XDP: its replies, to the IPv6 source our queries
/// leave from (the value of its entry in the program's backend map), are
/// redirected to the dataplanes.
#[test]
#[ignore = "needs root: run by make test"]
fn forwards_over_af_xdp_to_an_ipv6_backend() -> anyhow::Result<()> {
    let (lab, _knot) = backend_lab("fwdxsk6")?;
    let cfg = lab.config("f", &backend(&format!("[{BACKEND_V6}]:53"), ""));
    let server = lab.start("f", &cfg)?;
    server.wait_status("backend up with a MAC", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["mac"].is_string()
    })?;
    let health = server.status()?["backends"][0]["replies"]
        .as_u64()
        .unwrap_or(0);
    for i in 0..5 {
        let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "www.example.test", "A"]);
        assert!(answer_has(&out, ZONE_A), "query {i}:\n{out}");
    }
    let s = server.wait_status("5 replies over AF_XDP", |s| {
        s["backends"][0]["replies"].as_u64().unwrap_or(0) >= health + 5
            && total(s, "xsk", "received") >= 10
    })?;
    assert_eq!(s["backends"][0]["xsk"], true, "{s:#}");
    assert_eq!(xdp(&s, "not_backend"), 0, "{s:#}");
    assert_eq!(s["totals"]["forward"]["stray_replies"], 0, "{s:#}");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn forwards_over_sockets_and_answers_the_client_over_af_xdp() -> anyhow::Result<()> {
    let (lab, _knot) = backend_lab("fwdsock")?;
    let cfg = lab.config("s", &backend(&format!("[{BACKEND_V6}]:53"), "xsk = false"));
    let server = lab.start("s", &cfg)?;
    server.wait_status("backend up", |s| s["backends"][0]["up"] == true)?;
    for _ in 0..5 {
        let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "www.example.test", "A"]);
        assert!(answer_has(&out, ZONE_A), "{out}");
    }
    let s = server.wait_status("replies counted", |s| {
        s["backends"][0]["replies"].as_u64().unwrap_or(0) >= 5
    })?;
    assert_eq!(s["backends"][0]["xsk"], false);
    assert!(
        s["backends"][0]["mac"].is_null(),
        "a socket backend needs no MAC"
    );
    // The client's queries and answers went over AF_XDP; the backend leg did not.
    assert!(
        total(&s, "xsk", "answered") >= 5 && total(&s, "xsk", "received") < 10,
        "{s:#}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn socket_backend_replies_are_steered_to_one_receiving_socket_also_after_restarts_and_a_reload()
-> anyhow::Result<()> {
    let (lab, _knot) = backend_lab("steer")?;
    let cfg = lab.config("t", &backend(&format!("{BACKEND_V4}:53"), "xsk = false"));
    let server = lab.start("t", &cfg)?;
    server.wait_status("backend up", |s| s["backends"][0]["up"] == true)?;
    let ask = |n: u64| {
        for _ in 0..n {
            let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "www.example.test", "A"]);
            assert!(answer_has(&out, ZONE_A), "{out}");
        }
    };
    ask(5);
    let s = server.wait_status("replies counted", |s| {
        s["backends"][0]["replies"].as_u64().unwrap_or(0) >= 5
    })?;
    assert!(
        s["steering"]["steered"].as_u64().unwrap_or(0) >= 5,
        "{s:#}\n{}",
        server.log_text()
    );
    assert_eq!(s["steering"]["refused"], 0, "{s:#}");
    assert_eq!(s["totals"]["forward"]["stray_replies"], 0, "{s:#}");
    // Every reply came through the receiving socket (health checks use
    // their own sockets, which are not steered).
    assert_eq!(
        s["totals"]["forward"]["steered_replies"], s["backends"][0]["replies"],
        "{s:#}"
    );

    // New dataplanes get new pool and receiving sockets: still steered.
    for q in ["0", "1"] {
        assert!(server.cli(&["restart-queue", q]).status.success());
    }
    server.wait_status("both queues back", |s| {
        s["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .all(|q| q["restarts"] == 1 && q["registered"] == true)
        })
    })?;
    let before = s["steering"]["steered"].as_u64().unwrap_or(0);
    ask(5);
    let s = server.wait_status("steered after the restarts", |s| {
        s["steering"]["steered"].as_u64().unwrap_or(0) >= before + 5
    })?;
    assert_eq!(s["steering"]["refused"], 0, "{s:#}");

    // A reload hands the dataplanes new sockets: steered to the new
    // receivers.
    let before = s["steering"]["steered"].as_u64().unwrap_or(0);
    reload(
        &server,
        &lab.config(
            "t",
            &format!(
                "{}[forwarding]\ntimeout_ms = 1500\n",
                backend(&format!("{BACKEND_V4}:53"), "xsk = false")
            ),
        ),
    )?;
    ask(5);
    let s = server.wait_status("steered after the reload", |s| {
        s["steering"]["steered"].as_u64().unwrap_or(0) >= before + 5
    })?;
    assert_eq!(s["steering"]["refused"], 0, "{s:#}");
    assert_eq!(s["totals"]["forward"]["stray_replies"], 0, "{s:#}");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn replies_landing_on_the_other_queue_are_answered() -> anyhow::Result<()> {
    let (lab, knot) = backend_lab("otherq")?;
    drop(knot);
    // kdig on CPU 0 sends on tx queue 0; knotd on CPU 1 answers on queue 1.
    for (q, mask) in [(0, "1"), (1, "2")] {
        sh(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &lab.client_ns,
            "sh",
            "-c",
            &format!("echo {mask} > /sys/class/net/{CLIENT_IF}/queues/tx-{q}/xps_cpus"),
        ]))?;
    }
    let c = lab.client_ns.clone();
    let _knot = lab.knot_pinned(&c, "b1", &[&format!("{BACKEND_V4}@53")], 1)?;
    let server = lab.start(
        "o",
        &lab.config("o", &backend(&format!("{BACKEND_V4}:53"), "")),
    )?;
    server.wait_status("backend up with a MAC", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["mac"].is_string()
    })?;
    for i in 0..10 {
        let out = lab.client_pinned(
            0,
            &[
                "kdig",
                "+retry=0",
                "+timeout=2",
                &format!("@{SERVER_V4}"),
                "www.example.test",
                "A",
            ],
        );
        assert!(answer_has(&out, ZONE_A), "query {i}:\n{out}");
    }
    // Each queue reports on its own clock: wait for both reports.
    let received = |s: &serde_json::Value, q: usize| {
        s["queues"][q]["counters"]["xsk"]["received"]
            .as_u64()
            .unwrap_or(0)
    };
    let s = server.wait_status("counters", |s| {
        s["backends"][0]["replies"].as_u64().unwrap_or(0) >= 10
            && received(s, 0) >= 10
            && received(s, 1) >= 10
            && s["totals"]["forward"]["in_flight"] == 0
    })?;
    let q0 = &s["queues"][0]["counters"]["xsk"]["received"];
    let q1 = &s["queues"][1]["counters"]["xsk"]["received"];
    assert!(q0.as_u64().unwrap_or(0) >= 10, "queries on queue 0: {s:#}");
    assert!(q1.as_u64().unwrap_or(0) >= 10, "replies on queue 1: {s:#}");
    assert_eq!(s["totals"]["forward"]["in_flight"], 0);
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn replies_are_sized_to_the_frames_that_carry_them() -> anyhow::Result<()> {
    let lab = Lab::new("large")?;
    lab.set_mtu(3000)?;
    lab.client_addr(&format!("{BACKEND_V4}/24"), CLIENT_IF)?;
    let c = lab.client_ns.clone();
    let _knot = lab.knot(&c, "big", &[&format!("{BACKEND_V4}@53")], 2400)?;
    let server = lab.start(
        "l",
        &lab.config("l", &backend(&format!("{BACKEND_V4}:53"), "")),
    )?;
    server.wait_status("backend up with a MAC", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["mac"].is_string()
    })?;
    // Over AF_XDP a reply can be no larger than a UMEM frame: the query
    // asks the backend for no more, and the client gets its TC answer...
    let out = lab.kdig_output(&[
        &format!("@{SERVER_V4}"),
        "+bufsize=4096",
        "+ignore",
        "big.example.test",
        "TXT",
    ]);
    assert!(out.contains(" tc") && out.contains("(UDP)"), "{out}");
    // ... and the whole answer over TCP.
    let out = lab.kdig_output(&[
        &format!("@{SERVER_V4}"),
        "+bufsize=4096",
        "big.example.test",
        "TXT",
    ]);
    assert!(
        out.contains("NOERROR") && out.contains("xxxxxxxxxx") && out.contains("(TCP)"),
        "{out}"
    );
    let s = server.status()?;
    assert_eq!(xdp(&s, "too_large"), 0, "nothing oversized arrived: {s:#}");

    // Over a socket the reply can be large; it is larger than a frame
    // toward the client, so the kernel socket carries it.
    reload(
        &server,
        &lab.config("l", &backend(&format!("{BACKEND_V4}:53"), "xsk = false")),
    )?;
    server.wait_status("socket backend up", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["xsk"] == false
    })?;
    let out = lab.kdig_output(&[
        &format!("@{SERVER_V4}"),
        "+bufsize=4096",
        "+ignore",
        "big.example.test",
        "TXT",
    ]);
    assert!(
        out.contains("NOERROR") && out.contains("xxxxxxxxxx") && !out.contains(" tc"),
        "the whole answer over UDP: {out}"
    );
    server.wait_status("large reply counted", |s| {
        s["totals"]["forward"]["large_replies"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })?;
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_stopped_backend_is_taken_out_and_queries_keep_succeeding() -> anyhow::Result<()> {
    let (lab, _knot1) = backend_lab("health")?;
    lab.client_addr("192.0.2.11/24", CLIENT_IF)?;
    let c = lab.client_ns.clone();
    let knot2 = lab.knot(&c, "b2", &["192.0.2.11@53"], 0)?;
    let cfg = lab.config(
        "h",
        &format!(
            "{}{}",
            backend(&format!("{BACKEND_V4}:53"), ""),
            backend("192.0.2.11:53", "")
        ),
    );
    let server = lab.start("h", &cfg)?;
    server.wait_status("both up", |s| {
        s["backends"][0]["up"] == true && s["backends"][1]["up"] == true
    })?;
    drop(knot2);
    server.wait_status("second backend down", |s| s["backends"][1]["up"] == false)?;
    for i in 0..10 {
        let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "www.example.test", "A"]);
        assert!(
            answer_has(&out, ZONE_A),
            "query {i} after the failover:\n{out}"
        );
    }
    // The whole pool down: SERVFAIL (forwarding.all_down_action), counted.
    drop(_knot1);
    server.wait_status("both down", |s| s["backends"][0]["up"] == false)?;
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "www.example.test"]),
        "SERVFAIL"
    );
    server.wait_status("pool-down counted", |s| {
        s["totals"]["forward"]["pool_down"].as_u64().unwrap_or(0) >= 1
    })?;
    assert!(
        server
            .log_text()
            .contains("every backend of the pool is down")
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_backend_behind_a_gateway_is_reached_without_a_configured_mac() -> anyhow::Result<()> {
    let lab = Lab::new("gateway")?;
    // client namespace routes between the lab and a third namespace.
    let far = format!("{}-b", lab.name);
    let _far = NsGuard::new(&far)?;
    ip(&[
        "-n",
        &lab.client_ns,
        "link",
        "add",
        "gw0",
        "type",
        "veth",
        "peer",
        "name",
        "far0",
        "netns",
        &far,
    ])?;
    lab.client_addr("198.51.100.1/24", "gw0")?;
    ip(&["-n", &lab.client_ns, "link", "set", "gw0", "up"])?;
    ip(&["-n", &far, "addr", "add", "198.51.100.10/24", "dev", "far0"])?;
    ip(&["-n", &far, "link", "set", "far0", "up"])?;
    ip(&["-n", &far, "link", "set", "lo", "up"])?;
    ip(&["-n", &far, "route", "add", "default", "via", "198.51.100.1"])?;
    sh(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &lab.client_ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]))?;
    sh(std::process::Command::new("ip")
        .args(["netns", "exec", &far, "ethtool", "-K", "far0", "tx", "off"]))?;
    sh(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &lab.client_ns,
        "ethtool",
        "-K",
        "gw0",
        "tx",
        "off",
    ]))?;
    ip(&[
        "-n",
        &lab.server_ns,
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        CLIENT_V4,
    ])?;
    let _knot = lab.knot(&far, "far", &["198.51.100.10@53"], 0)?;
    let server = lab.start("g", &lab.config("g", &backend("198.51.100.10:53", "")))?;
    let gw_mac = mac_of(&lab.client_ns, CLIENT_IF)?;
    let gw_mac = gw_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    server.wait_status("backend up with the gateway's MAC", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["mac"] == gw_mac.as_str()
    })?;
    for i in 0..5 {
        let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "www.example.test", "A"]);
        assert!(answer_has(&out, ZONE_A), "query {i}:\n{out}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_silent_backend_times_out_and_nothing_leaks() -> anyhow::Result<()> {
    let lab = Lab::new("timeout")?;
    lab.client_addr("192.0.2.12/24", CLIENT_IF)?;
    let silent = lab.in_ns(false, || Ok(std::net::UdpSocket::bind("192.0.2.12:53")?))?;
    let cfg = lab.config(
        "t",
        "[[backend]]\naddress = \"192.0.2.12:53\"\n[backend.health]\ninterval_ms = 600000\n\
         [forwarding]\ntimeout_ms = 300\ntimeout_action = \"servfail\"\n",
    );
    let server = lab.start("t", &cfg)?;
    server.wait_status("backend resolved", |s| s["backends"][0]["mac"].is_string())?;
    for i in 0..5 {
        assert_eq!(
            lab.kdig(&[&format!("@{SERVER_V4}"), &format!("t{i}.example.test")]),
            "SERVFAIL"
        );
    }
    let s = server.wait_status("timeouts counted, nothing in flight", |s| {
        s["backends"][0]["timeouts"].as_u64().unwrap_or(0) >= 5
            && s["totals"]["forward"]["in_flight"] == 0
    })?;
    assert_eq!(s["backends"][0]["replies"], 0, "{s:#}");
    drop(silent);
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_truncated_answer_is_relayed_and_the_tcp_retry_answered() -> anyhow::Result<()> {
    let lab = Lab::new("tcp")?;
    lab.client_addr(&format!("{BACKEND_V4}/24"), CLIENT_IF)?;
    let c = lab.client_ns.clone();
    let _knot = lab.knot(&c, "tcp", &[&format!("{BACKEND_V4}@53")], 2400)?;
    let server = lab.start(
        "t",
        &lab.config("t", &backend(&format!("{BACKEND_V4}:53"), "")),
    )?;
    server.wait_status("backend up", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["mac"].is_string()
    })?;
    // UDP with a 1232-byte buffer: TC=1 from the backend, relayed as it is.
    let out = lab.kdig_output(&[
        &format!("@{SERVER_V4}"),
        "+bufsize=1232",
        "+ignore",
        "big.example.test",
        "TXT",
    ]);
    assert!(
        out.contains(" tc") && out.contains("(UDP)"),
        "truncated over UDP:\n{out}"
    );
    // kdig's own retry over TCP after the truncated answer.
    let out = lab.kdig_output(&[
        &format!("@{SERVER_V4}"),
        "+bufsize=1232",
        "big.example.test",
        "TXT",
    ]);
    assert!(
        out.contains("NOERROR") && out.contains("xxxxxxxxxx") && out.contains("(TCP)"),
        "TCP retry:\n{out}"
    );
    let out = lab.kdig_output(&[&format!("@{SERVER_V6}"), "+tcp", "www.example.test", "A"]);
    assert!(answer_has(&out, ZONE_A) && out.contains("(TCP)"), "{out}");
    // Garbage closes that connection only.
    lab.in_ns(false, || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect((SERVER_V4, 53))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(&[0, 5, 1, 2, 3, 4, 5])?;
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf)?, 0, "closed without an answer");
        Ok(())
    })?;
    let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "+tcp", "www.example.test", "A"]);
    assert!(answer_has(&out, ZONE_A), "still serving:\n{out}");
    let s = server.wait_status("TCP counted", |s| {
        s["tcp"]["queries"].as_u64().unwrap_or(0) >= 3 && s["tcp"]["bad_framing"] == 1
    })?;
    assert!(
        s["tcp"]["answered"].as_u64().unwrap_or(0) >= 3,
        "{:#}",
        s["tcp"]
    );
    assert!(
        s["tcp"]["backend_connects"].as_u64().unwrap_or(0) >= 1,
        "{:#}",
        s["tcp"]
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn queries_in_flight_survive_the_restart_of_their_dataplane() -> anyhow::Result<()> {
    let lab = Lab::new("strand")?;
    lab.client_addr("192.0.2.14/24", CLIENT_IF)?;
    let slow = lab.in_ns(false, || Ok(std::net::UdpSocket::bind("192.0.2.14:53")?))?;
    let cfg = lab.config(
        "r",
        "[[backend]]\naddress = \"192.0.2.14:53\"\n[backend.health]\ninterval_ms = 600000\n[forwarding]\ntimeout_ms = 5000\n",
    );
    let server = lab.start("r", &cfg)?;
    server.wait_status("backend resolved", |s| s["backends"][0]["mac"].is_string())?;
    lab.steer_client_to_queue(0)?;
    slow.set_read_timeout(Some(Duration::from_secs(5)))?;
    // The backend answers 800 ms late; meanwhile queue 0's dataplane, which
    // forwarded the query, is killed and replaced.
    let backend = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = slow.recv_from(&mut buf)?;
            if buf[..n].windows(7).any(|w| w == b"\x06strand") {
                std::thread::sleep(Duration::from_millis(800));
                let mut reply = buf[..n].to_vec();
                reply[2] |= 0x80;
                reply[3] = 3;
                slow.send_to(&reply, from)?;
                return Ok(());
            }
        }
    });
    let victim = server.queue(0)?["pid"].as_u64().unwrap() as i32;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let status = lab.kdig(&[
        &format!("@{SERVER_V4}"),
        "+timeout=3",
        "strand.example.test",
    ]);
    killer.join().expect("killer");
    backend.join().expect("backend")?;
    assert_eq!(
        status, "NXDOMAIN",
        "the late reply still reached the client"
    );
    let s = server.wait_status("replaced, nothing in flight", |s| {
        s["queues"][0]["restarts"] == 1 && s["totals"]["forward"]["in_flight"] == 0
    })?;
    assert_eq!(s["backends"][0]["replies"], 1, "{s:#}");
    Ok(())
}

/// `xdpdns reload` with `config`; its stdout.
fn reload(server: &Server, config: &str) -> anyhow::Result<String> {
    std::fs::write(&server.config, config)?;
    let out = server.cli(&["reload"]);
    anyhow::ensure!(
        out.status.success(),
        "reload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
#[ignore = "needs root: run by make test"]
fn backends_are_added_swapped_and_removed_live_under_load() -> anyhow::Result<()> {
    const OTHER: &str = "192.0.2.11";
    let (lab, _a) = backend_lab("fwdreload")?;
    lab.client_addr(&format!("{OTHER}/24"), CLIENT_IF)?;
    let c = lab.client_ns.clone();
    let _b = lab.knot(&c, "b2", &[&format!("{OTHER}@53")], 0)?;
    lab.steer_client_to_queue(0)?;
    let a = backend(&format!("{BACKEND_V4}:53"), "");
    let b = backend(&format!("{OTHER}:53"), "");
    let server = lab.start("f", &lab.config("f", &a))?;
    server.wait_status("backend up", |s| s["backends"][0]["up"] == true)?;
    let pids = server.dataplane_pids()?;

    // Steady load across three reloads: add B, swap the order (every
    // backend changes index), remove A.
    let load = lab.kxdpgun(2000, 5, SERVER_V4)?;
    server.wait_status("load flowing to A", |s| {
        s["backends"][0]["replies"].as_u64().unwrap_or(0) > 1000
    })?;
    let said = reload(&server, &lab.config("f", &format!("{a}{b}")))?;
    assert!(said.contains("backends"), "{said}");
    let s = server.wait_status("both backends answering", |s| {
        s["backends"][1]["replies"].as_u64().unwrap_or(0) > 100
    })?;
    let a_before = s["backends"][0]["replies"].as_u64().unwrap_or(0);
    assert!(
        a_before > s["backends"][1]["replies"].as_u64().unwrap_or(0) + 800,
        "A kept its counters: {s:#}"
    );
    reload(&server, &lab.config("f", &format!("{b}{a}")))?;
    let s = server.wait_status("order swapped", |s| {
        s["backends"][0]["address"] == format!("{OTHER}:53")
    })?;
    assert!(
        s["backends"][1]["replies"].as_u64().unwrap_or(0) >= a_before,
        "A's counters followed it to index 1: {s:#}"
    );
    std::thread::sleep(Duration::from_millis(800));
    reload(&server, &lab.config("f", &b))?;
    let load = Lab::kxdpgun_result(load)?;
    let s = server.wait_status("only B, nothing in flight", |s| {
        s["backends"].as_array().is_some_and(|b| b.len() == 1)
            && s["totals"]["forward"]["in_flight"] == 0
    })?;
    assert_eq!(s["backends"][0]["address"], format!("{OTHER}:53"));
    assert_eq!(
        server.dataplane_pids()?,
        pids,
        "no dataplane restarted:\n{}",
        server.log_text()
    );
    // A handful of replies can cross a reload's window and find no query
    // (seen 5 of ~10,000 in one CI run, 0 in most; see the stop notes):
    // more than that is a fault.
    let stray = s["totals"]["forward"]["stray_replies"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        stray <= 10,
        "{stray} stray replies across three reloads: {s:#}"
    );
    assert_eq!(s["totals"]["forward"]["evicted"], 0, "{s:#}");
    let lost = load.sent - load.received;
    // A margin for a loaded 2-CPU machine; the figure is printed below.
    assert!(
        lost * 100 <= load.sent,
        "{lost} of {} queries lost across three reloads",
        load.sent
    );
    eprintln!("reloads under load: {lost} of {} lost", load.sent);
    // Only B is asked now.
    let before = s["backends"][0]["queries"].as_u64().unwrap_or(0);
    for _ in 0..5 {
        let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "www.example.test", "A"]);
        assert!(answer_has(&out, ZONE_A), "{out}");
    }
    server.wait_status("B asked five more times", |s| {
        s["backends"][0]["queries"].as_u64() == Some(before + 5)
    })?;

    // What forwarding cannot change live is refused, nothing changes.
    std::fs::write(
        &server.config,
        lab.config("f", &format!("{b}[forwarding]\nmax_in_flight = 1024\n")),
    )?;
    let out = server.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_in_flight") && err.contains("restart"),
        "{err}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_listen_address_added_by_a_reload_is_served_over_udp_and_tcp() -> anyhow::Result<()> {
    let (lab, _knot) = backend_lab("tcpreload")?;
    lab.server_addr("192.0.2.3/24", SERVER_IF)?;
    let b = backend(&format!("{BACKEND_V4}:53"), "");
    let server = lab.start("r", &lab.config("r", &b))?;
    server.wait_status("backend up", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["mac"].is_string()
    })?;
    let tcp = |at: &str| lab.kdig_output(&[&format!("@{at}"), "+tcp", "www.example.test", "A"]);
    assert!(
        !answer_has(&tcp("192.0.2.3"), ZONE_A),
        "not a listen address yet"
    );
    let said = reload(
        &server,
        &lab.config("r", &format!("[[listen]]\naddress = \"192.0.2.3:53\"\n{b}")),
    )?;
    assert!(said.contains("listen addresses"), "{said}");
    let out = tcp("192.0.2.3");
    assert!(answer_has(&out, ZONE_A) && out.contains("(TCP)"), "{out}");
    let out = lab.kdig_output(&["@192.0.2.3", "www.example.test", "A"]);
    assert!(answer_has(&out, ZONE_A) && out.contains("(UDP)"), "{out}");
    // And removed again: TCP stops with UDP.
    reload(&server, &lab.config("r", &b))?;
    assert!(
        !answer_has(&tcp("192.0.2.3"), ZONE_A),
        "no longer listened on"
    );
    let out = tcp(SERVER_V4);
    assert!(
        answer_has(&out, ZONE_A),
        "the other address still is:\n{out}"
    );
    Ok(())
}
