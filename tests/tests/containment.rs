//! Containment: with the loader running as the packaged unit runs it (its
//! own user, the unit's capabilities, no root), a hung or misbehaving
//! dataplane is always evicted and replaced, a dataplane cannot signal or
//! map what its sandbox forbids, and one that writes garbage into the
//! shared in-flight table gets nothing emitted by its siblings.
//! Needs a test-hooks build of the dataplane (`make test` makes one).

use std::net::UdpSocket;

use anyhow::Context;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use xdpdns_netns_tests::frames::{self, Sniffer};
use xdpdns_netns_tests::*;

fn queue_of(s: &serde_json::Value, queue: u32) -> serde_json::Value {
    s["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["queue"] == queue).cloned())
        .unwrap_or_default()
}

fn pid_of(loader: &UnitLoader, queue: u32) -> u32 {
    loader
        .queue(queue)
        .map_or(0, |q| q["pid"].as_u64().unwrap_or(0) as u32)
}

/// A line of `/proc/PID/limits`: (soft, hard).
fn limit(pid: u32, name: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let rest = text.lines().find_map(|l| l.strip_prefix(name))?;
    let mut it = rest.split_whitespace();
    Some((it.next()?.to_string(), it.next()?.to_string()))
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_hung_dataplane_is_evicted_by_the_unprivileged_loader_while_its_queue_keeps_answering()
-> anyhow::Result<()> {
    let lab = Lab::new("hungunit")?;
    let mut loader = lab.start_as_unit("h", "[supervisor]\nheartbeat_timeout_ms = 1000\n")?;
    let victim = pid_of(&loader, 1);
    let other = pid_of(&loader, 0);

    // What the sandbox looks like from outside, before we stop it.
    let meta = std::fs::metadata(format!("/proc/{victim}/status"))?;
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "a non-dumpable process's /proc files belong to root"
    );
    assert_eq!(limit(victim, "Max core file size").unwrap().0, "0");
    assert_eq!(
        limit(victim, "Max processes").unwrap(),
        ("0".into(), "0".into())
    );
    let (files, files_hard) = limit(victim, "Max open files").unwrap();
    assert_eq!(files, files_hard);
    assert!(
        files.parse::<u32>()? <= 64 + xdpdns_common::ipc::MAX_DESCRIPTORS,
        "open files {files}: what the loader may hand it, not the loader's limit"
    );
    let (locked, _) = limit(victim, "Max locked memory").unwrap();
    assert_ne!(locked, "unlimited", "locked memory bounded to the UMEM");
    assert_eq!(
        proc_status(victim, "NSpid").map(|s| s.split_whitespace().count()),
        Some(2),
        "in a PID namespace of its own"
    );

    kill(Pid::from_raw(victim as i32), Signal::SIGSTOP)?;
    let stopped = Instant::now();
    lab.steer_client_to_queue(1)?;
    // Its queue answers — through the kernel path once evicted, then
    // through the new dataplane — within the heartbeat timeout plus a bound.
    let answered = wait_for(Duration::from_secs(8), "queue 1 to answer again", || {
        (lab.kdig(&[&format!("@{SERVER_V4}"), "+timeout=1", "hung.example"]) == "REFUSED")
            .then(|| stopped.elapsed())
    })
    .with_context(|| loader.log_text())?;
    let q = loader.wait_status("queue 1 replaced", |s| {
        let q = &s["queues"][1];
        q["pid"].as_u64().is_some_and(|p| p as u32 != victim) && q["registered"] == true
    })?;
    let why = q["queues"][1]["last_exit"].as_str().unwrap_or("");
    assert!(why.contains("silent"), "{why}");
    assert_eq!(q["queues"][1]["unkillable"], 0);
    assert!(
        !alive(victim) || proc_status(victim, "State").is_some_and(|s| s.starts_with('Z')),
        "the stopped dataplane was killed (CAP_KILL) and reaped"
    );
    assert_eq!(pid_of(&loader, 0), other, "queue 0 untouched");
    eprintln!("stopped dataplane: queue answered again after {answered:?}");
    assert!(answered < Duration::from_secs(6), "{answered:?}");

    // restart-queue and SIGTERM complete.
    let t = Instant::now();
    let out = loader.cli(&["restart-queue", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    loader.wait_status("queue 1 restarted", |s| {
        s["queues"][1]["restarts"] == 2 && s["queues"][1]["registered"] == true
    })?;
    assert!(t.elapsed() < Duration::from_secs(10));
    let exit = loader.stop()?;
    assert!(exit.success(), "{exit:?}\n{}", loader.log_text());
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn inside_the_sandbox_signals_executable_and_locked_memory_kill_the_dataplane() -> anyhow::Result<()>
{
    let lab = Lab::new("probes")?;
    for (i, probe) in [
        "probe-kill",
        "probe-tgkill",
        "probe-setown",
        "probe-exec",
        "probe-mlock",
        "probe-ppoll",
    ]
    .into_iter()
    .enumerate()
    {
        let instance = format!("p{i}");
        // Queue 1 probes (and dies right after registering, taking what
        // reached its ring: wait until its budget is spent); queue 0
        // serves on, the kernel path among it.
        let mut loader = lab.start_as_unit_hooked(
            &instance,
            "[supervisor]\nmax_restarts = 1\n",
            &format!("{probe}@1"),
        )?;
        let s = loader.wait_status(probe, |s| queue_of(s, 1)["phase"] == "kernel-only")?;
        let why = queue_of(&s, 1)["last_exit"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert_eq!(
            why, "killed by signal 31",
            "{probe}: SIGSYS from seccomp, not exit 77 (the call succeeded)"
        );
        assert!(loader.running(), "{probe}: the loader carries on");
        assert_eq!(
            lab.kdig(&[&format!("@{SERVER_V4}"), "probe.example"]),
            "REFUSED",
            "{probe}: the kernel path answers"
        );
        let exit = loader.stop()?;
        assert!(exit.success(), "{probe}: {exit:?}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn dataplanes_that_lie_to_the_loader_are_evicted_and_the_loader_carries_on() -> anyhow::Result<()> {
    let lab = Lab::new("lies")?;
    for (i, (lie, said)) in [
        ("second-ready", "a second Ready"),
        ("big-vector", "impossible shape"),
        ("overflow", "beyond what"),
    ]
    .into_iter()
    .enumerate()
    {
        let instance = format!("l{i}");
        let mut loader = lab.start_as_unit_hooked(
            &instance,
            "[supervisor]\nmax_restarts = 1\n",
            &format!("{lie}@1"),
        )?;
        let mut last = 0u64;
        let s = wait_for(Duration::from_secs(15), lie, || {
            let s = loader.status().ok()?;
            // Totals never go backwards and never take a liar's numbers.
            let now = total(&s, "xsk", "received") + total(&s, "kernel", "answered");
            assert!(now >= last, "{lie}: totals went from {last} to {now}");
            assert!(now < 1 << 40, "{lie}: totals took a lie: {now}");
            last = now;
            (queue_of(&s, 1)["phase"] == "kernel-only").then_some(s)
        })
        .with_context(|| loader.log_text())?;
        assert_eq!(
            queue_of(&s, 0)["restarts"],
            0,
            "{lie}: the honest queue serves on"
        );
        let why = queue_of(&s, 1)["last_exit"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(why.contains(said), "{lie}: {why}");
        assert!(loader.running(), "{lie}: the loader carries on");
        assert_eq!(
            lab.kdig(&[&format!("@{SERVER_V4}"), "lie.example"]),
            "REFUSED"
        );
        let exit = loader.stop()?;
        assert!(exit.success(), "{lie}: {exit:?}");
    }
    Ok(())
}

const BACKEND: &str = "192.0.2.20";

/// A query for `name` with `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_sibling_writing_garbage_into_shared_entries_gets_nothing_emitted() -> anyhow::Result<()> {
    let lab = Lab::new("scribble")?;
    lab.client_addr(&format!("{BACKEND}/24"), CLIENT_IF)?;
    let _backend = RecordingBackend::start_holding(
        &lab,
        &format!("{BACKEND}:53"),
        &[("late", Some(Duration::from_millis(400))), ("mute", None)],
    )?;
    let extra = format!(
        "[[backend]]\naddress = \"{BACKEND}:53\"\n[backend.health]\ninterval_ms = 600000\n\
         [forwarding]\ntimeout_ms = 1000\ntimeout_action = \"servfail\"\n"
    );
    // Queue 1's dataplane rewrites queue 0's entries of "scribble" queries.
    let loader = lab.start_as_unit_hooked("x", &extra, "scribble-from-1")?;
    loader.wait_status("ready and the backend resolved", |s| {
        s["ready"] == true && s["backends"][0]["mac"].is_string()
    })?;
    let (q0, q1) = (pid_of(&loader, 0), pid_of(&loader, 1));
    lab.steer_client_to_queue(0)?;
    let ifindex = ifindex_of(&lab.client_ns, CLIENT_IF)?;
    let sniffer = Sniffer::start(lab.in_ns(false, || frames::sniff_socket(ifindex))?);
    let sock = lab.in_ns(false, || Ok(UdpSocket::bind((CLIENT_V4, 0))?))?;
    let server: std::net::SocketAddr = format!("{SERVER_V4}:53").parse()?;
    for i in 0..12u16 {
        sock.send_to(
            &query(0x1000 + i, &format!("scribble.l{i}.late.example")),
            server,
        )?;
        sock.send_to(
            &query(0x2000 + i, &format!("scribble.m{i}.mute.example")),
            server,
        )?;
    }
    // The sibling plants forged entries in free slots of queue 0 when it
    // rewrites, the very slots queue 0 draws next: the queries below are
    // sent once it has (queue 0's sweep has freed its first plants, due at
    // once, as bad) and a while after, when every marked entry is rewritten
    // and it plants no more. Sent earlier, a plant can land in a slot
    // queue 0 had drawn for one of them (on a loaded machine, CI saw it).
    loader.wait_status("the sibling's first plants swept", |s| {
        s["totals"]["forward"]["bad_entries"].as_u64().unwrap_or(0) >= 1
    })?;
    std::thread::sleep(Duration::from_millis(300));
    // Queries the sibling leaves alone are answered all along.
    for i in 0..5u16 {
        sock.send_to(&query(0x3000 + i, &format!("fine{i}.example")), server)?;
    }
    sock.send_to(&query(0x4000, "honest.late.example"), server)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut ids = Vec::new();
    let end = Instant::now() + Duration::from_millis(2500);
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf)
            && n >= 12
        {
            ids.push(u16::from_be_bytes([buf[0], buf[1]]));
        }
    }
    let seen = sniffer.finish()?;
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec![0x3000, 0x3001, 0x3002, 0x3003, 0x3004, 0x4000],
        "only queries whose entries were left alone are answered"
    );
    let (server_ip, client_ip, backend_ip): ([u8; 4], [u8; 4], [u8; 4]) = (
        SERVER_V4.parse::<std::net::Ipv4Addr>()?.octets(),
        CLIENT_V4.parse::<std::net::Ipv4Addr>()?.octets(),
        BACKEND.parse::<std::net::Ipv4Addr>()?.octets(),
    );
    let from_server: Vec<_> = seen
        .iter()
        .filter_map(|f| frames::udp4(f).map(|u| (f, u)))
        .filter(|(_, (src, _, dst, _))| {
            *src == server_ip || *dst != client_ip && *dst != backend_ip
        })
        .collect();
    let answers = from_server
        .iter()
        .filter(|(_, (_, sport, dst, _))| *sport == 53 && *dst == client_ip)
        .count();
    assert!(
        answers >= 6,
        "the sniffer saw the answers: {from_server:02x?}"
    );
    for (f, (src, sport, dst, _)) in &from_server {
        assert_eq!(*src, server_ip, "from our address: {f:02x?}");
        assert!(
            *dst == client_ip && *sport == 53 || *dst == backend_ip,
            "to the client from port 53, or to the backend: {f:02x?}"
        );
        assert_eq!(f[0] & 1, 0, "to a unicast MAC: {f:02x?}");
    }
    let s = loader.wait_status("bad entries counted", |s| {
        s["totals"]["forward"]["bad_entries"].as_u64().unwrap_or(0) >= 24
    })?;
    assert_eq!(
        (pid_of(&loader, 0), pid_of(&loader, 1)),
        (q0, q1),
        "nobody was restarted"
    );
    assert_eq!(s["queues"][0]["restarts"], 0, "{s:#}");
    eprintln!(
        "scribbled: bad_entries {}, sweep_limited {}, frames seen {}",
        s["totals"]["forward"]["bad_entries"],
        s["totals"]["forward"]["sweep_limited"],
        seen.len()
    );
    Ok(())
}
