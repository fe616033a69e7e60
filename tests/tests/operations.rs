//! Supervision, reload, restart-queue and metrics on a running instance.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use xdpdns_netns_tests::frames;
use xdpdns_netns_tests::*;

fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

fn pid_of(server: &Server, queue: u32) -> u32 {
    server.queue(queue).unwrap()["pid"].as_u64().unwrap_or(0) as u32
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_killed_dataplane_is_replaced_under_load_with_little_loss() -> anyhow::Result<()> {
    let lab = Lab::new("kill9")?;
    let server = lab.start("k", &lab.config("k", ""))?;
    lab.steer_server_to_queue(0)?;
    let gun = lab.kxdpgun(20_000, 4, SERVER_V4)?;
    // Find the queue the generator's traffic lands on.
    let busy = wait_for(Duration::from_secs(3), "traffic on a queue", || {
        (0..2).find(|q| {
            server
                .queue(*q)
                .is_ok_and(|v| v["counters"]["xsk"]["received"].as_u64().unwrap_or(0) > 1000)
        })
    })?;
    let victim = pid_of(&server, busy);
    let other = pid_of(&server, 1 - busy);
    let killed = Instant::now();
    signal(victim, Signal::SIGKILL);
    let back = wait_for(
        Duration::from_secs(2),
        "the replacement to register",
        || {
            let q = server.queue(busy).ok()?;
            let pid = q["pid"].as_u64()? as u32;
            let ago = Duration::from_millis(q["registered_ms_ago"].as_u64()?);
            (pid != victim && q["registered"] == true).then(|| killed.elapsed().saturating_sub(ago))
        },
    )?;
    let load = Lab::kxdpgun_result(gun)?;
    let lost = load.sent.saturating_sub(load.received);
    let s = server.wait_status("final counters", |_| true)?;
    eprintln!(
        "kill -9 under load: {load:?}, lost {lost}, replacement registered after {back:?}; server answered xsk {} kernel {}",
        total(&s, "xsk", "answered"),
        total(&s, "kernel", "answered")
    );
    assert!(load.sent > 50_000, "{load:?}");
    // A margin that holds on a loaded 2-CPU machine (the figure itself is
    // printed above and reported in the notes; typically well under 0.1 %).
    assert!(lost * 20 <= load.sent, "lost {lost} of {}", load.sent);
    assert!(
        back < Duration::from_secs(3),
        "re-registered after {back:?}"
    );
    let q = server.queue(busy)?;
    assert_eq!(q["restarts"], 1);
    assert_eq!(pid_of(&server, 1 - busy), other, "other queue untouched");
    assert_eq!(server.queue(1 - busy)?["restarts"], 0);
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_hung_dataplane_is_detected_and_replaced() -> anyhow::Result<()> {
    let lab = Lab::new("hang")?;
    let cfg = lab.config("h", "[supervisor]\nheartbeat_timeout_ms = 1000\n");
    let server = lab.start("h", &cfg)?;
    let other = pid_of(&server, 0);
    let victim = pid_of(&server, 1);
    signal(victim, Signal::SIGSTOP);
    let q = server.wait_status("queue 1 replaced", |s| {
        let q = &s["queues"][1];
        q["pid"].as_u64().is_some_and(|p| p as u32 != victim) && q["registered"] == true
    })?;
    assert!(!alive(victim) || proc_status(victim, "State").is_some_and(|s| s.starts_with('Z')));
    assert!(
        q["queues"][1]["last_exit"]
            .as_str()
            .unwrap_or("")
            .contains("silent"),
        "{q:#}"
    );
    assert_eq!(pid_of(&server, 0), other, "queue 0 untouched");
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "after.example"]),
        "REFUSED"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn restart_queue_replaces_one_queue_only() -> anyhow::Result<()> {
    let lab = Lab::new("restartq")?;
    let server = lab.start("r", &lab.config("r", ""))?;
    let (p0, p1) = (pid_of(&server, 0), pid_of(&server, 1));
    let out = server.cli(&["restart-queue", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_status("queue 1 replaced", |s| {
        let q = &s["queues"][1];
        q["pid"].as_u64().is_some_and(|p| p as u32 != p1) && q["registered"] == true
    })?;
    assert_eq!(pid_of(&server, 0), p0);
    let out = server.cli(&["restart-queue", "7"]);
    assert!(!out.status.success(), "an unknown queue is an error");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn dataplanes_run_on_their_queues_cpus_and_a_reload_moves_them_on_restart() -> anyhow::Result<()> {
    let lab = Lab::new("cpus")?;
    let cfg = lab.config("c", "").replace(
        "stats_interval_ms = 200",
        "stats_interval_ms = 200\ncpus = [1, 0]",
    );
    let server = lab.start("c", &cfg)?;
    let cpus = |q: u32| proc_status(pid_of(&server, q), "Cpus_allowed_list").unwrap_or_default();
    assert_eq!(cpus(0), "1", "queue 0 on cpus[0]");
    assert_eq!(cpus(1), "0", "queue 1 on cpus[1]");
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "pinned.example"]),
        "REFUSED"
    );
    // A reload changes the list; a restarted queue takes it.
    std::fs::write(&server.config, cfg.replace("cpus = [1, 0]", "cpus = [0]"))?;
    let out = server.cli(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("dataplane.cpus") && said.contains("restart-queue"),
        "{said}"
    );
    assert_eq!(cpus(0), "1", "running dataplanes stay where they are");
    let p0 = pid_of(&server, 0);
    assert!(server.cli(&["restart-queue", "0"]).status.success());
    server.wait_status("queue 0 replaced", |s| {
        s["queues"][0]["pid"]
            .as_u64()
            .is_some_and(|p| p as u32 != p0)
            && s["queues"][0]["registered"] == true
    })?;
    assert_eq!(cpus(0), "0");
    // CPUs this process may not use are refused up front, by name.
    let bad = lab.write_config("bad", &cfg.replace("cpus = [1, 0]", "cpus = [0, 1000]"))?;
    let out = lab.xdpdns(&["check", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dataplane.cpus") && err.contains("1000"),
        "{err}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn past_its_restart_budget_a_queue_stays_on_the_kernel_path() -> anyhow::Result<()> {
    let lab = Lab::new("budget")?;
    let cfg = lab.config(
        "b",
        "[supervisor]\nmax_restarts = 2\nrestart_window_s = 600\n",
    );
    let server = lab.start("b", &cfg)?;
    for round in 0..3 {
        let pid = wait_for(
            Duration::from_secs(5),
            "a running dataplane on queue 1",
            || {
                let q = server.queue(1).ok()?;
                (q["registered"] == true)
                    .then(|| q["pid"].as_u64())
                    .flatten()
            },
        )?;
        signal(pid as u32, Signal::SIGKILL);
        if round < 2 {
            server.wait_status("restart", |s| s["queues"][1]["restarts"] == round + 1)?;
        }
    }
    server.wait_status("kernel-only phase", |s| {
        s["queues"][1]["phase"] == "kernel-only"
    })?;
    lab.steer_client_to_queue(1)?;
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "kernel.example"]),
        "REFUSED",
        "served by the kernel path"
    );
    let out = server.cli(&["restart-queue", "1"]);
    assert!(out.status.success());
    server.wait_status("queue 1 back", |s| s["queues"][1]["phase"] == "running")?;
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn reload_applies_valid_changes_and_refuses_the_rest() -> anyhow::Result<()> {
    let lab = Lab::new("reload")?;
    lab.server_addr("192.0.2.3/24", SERVER_IF)?;
    let server = lab.start("r", &lab.config("r", ""))?;
    let v4 = format!("@{SERVER_V4}");
    assert_eq!(lab.kdig(&[&v4, "x.blocked.test"]), "REFUSED");
    let pids = server.dataplane_pids()?;

    // A new rule and a new listen address, applied live.
    let added = lab.config(
        "r",
        "[[listen]]\naddress = \"192.0.2.3:53\"\n[[rule]]\nqname_suffix = \"blocked.test.\"\naction = \"nxdomain\"\n",
    );
    std::fs::write(&server.config, &added)?;
    let out = server.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("listen addresses") && said.contains("rules replaced"),
        "{said}"
    );
    assert_eq!(lab.kdig(&[&v4, "x.blocked.test"]), "NXDOMAIN");
    assert_eq!(
        lab.kdig(&["@192.0.2.3", "new.example"]),
        "REFUSED",
        "new address served"
    );
    let s = server.wait_status("new address answered over AF_XDP", |s| {
        s["listen"].as_array().is_some_and(|l| l.len() == 3) && total(s, "xsk", "answered") >= 3
    })?;
    assert_eq!(
        server.dataplane_pids()?,
        pids,
        "applied without restarting dataplanes"
    );
    assert!(s["rules"][0]["hits"].as_u64().unwrap_or(0) >= 1, "{s:#}");

    // An invalid file changes nothing.
    std::fs::write(
        &server.config,
        added.replace("[[rule]]", "bogus_key = 1\n[[rule]]"),
    )?;
    let out = server.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_key"));
    assert_eq!(
        lab.kdig(&[&v4, "x.blocked.test"]),
        "NXDOMAIN",
        "old configuration still in force"
    );

    // What needs a restart is refused with that advice.
    std::fs::write(
        &server.config,
        lab.config_full("r", "", "frame_size = 4096", ""),
    )?;
    let out = server.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("restart"));

    // SIGHUP re-reads the file: the address and the rule go away.
    std::fs::write(&server.config, lab.config("r", ""))?;
    server.signal(Signal::SIGHUP);
    server.wait_status("listen back to two addresses", |s| {
        s["listen"].as_array().is_some_and(|l| l.len() == 2)
    })?;
    assert_eq!(lab.kdig(&[&v4, "x.blocked.test"]), "REFUSED");
    let gone = lab.kdig(&["@192.0.2.3", "gone.example"]);
    assert!(
        gone.starts_with("no answer"),
        "removed address no longer served: {gone}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn metrics_match_the_traffic() -> anyhow::Result<()> {
    let lab = Lab::new("metrics")?;
    let server = lab.start(
        "m",
        &lab.config("m", "[metrics]\naddress = \"127.0.0.1:9153\"\n"),
    )?;
    let sent = 25u64;
    for i in 0..sent {
        assert_eq!(
            lab.kdig(&[&format!("@{SERVER_V4}"), &format!("m{i}.example")]),
            "REFUSED"
        );
    }
    // Three responses (QR=1) sent as queries: dropped, counted by reason.
    lab.in_ns(false, || {
        let s = std::net::UdpSocket::bind(format!("{CLIENT_V4}:0"))?;
        let mut q = frames::query(9, "resp.example", 1, None);
        q[2] |= 0x80;
        for _ in 0..3 {
            s.send_to(&q, format!("{SERVER_V4}:53"))?;
        }
        Ok(())
    })?;
    server.wait_status("answers and drops reported", |s| {
        total(s, "xsk", "answered") >= sent && dropped(s, "xsk", "dns_response") >= 3
    })?;
    let sum_in = |text: &str, metric: &str, filter: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let text = lab.metrics_until("127.0.0.1:9153", "the drops", |t| {
        sum_in(t, "xdpdns_dropped_total{", "reason=\"dns_response\"") >= 3
    })?;
    let sum = |metric: &str, filter: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(
        sum("xdpdns_answered_total{", "path=\"xsk\"") >= sent,
        "{text}"
    );
    assert!(
        sum("xdpdns_received_total{", "path=\"xsk\"") >= sent,
        "{text}"
    );
    assert!(
        sum("xdpdns_xdp_frames_total{", "outcome=\"redirect\"") >= sent,
        "{text}"
    );
    assert_eq!(sum("xdpdns_dataplane_up{", ""), 2, "{text}");
    assert!(sum("xdpdns_rule_hits_total{", "default") >= sent, "{text}");
    assert!(
        text.contains("# TYPE xdpdns_dropped_total counter"),
        "{text}"
    );
    assert!(
        sum("xdpdns_dropped_total{", "reason=\"dns_response\"") >= 3,
        "{text}"
    );
    Ok(())
}
