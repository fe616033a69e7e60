//! One measurement: a kxdpgun run at a fixed offered rate (open loop), or a
//! dnsperf run (closed loop), with the server's CPU time and loss counters.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde::Serialize;
use xdpdns_netns_tests::{CLIENT_IF, Lab, SERVER_IF, SERVER_V4};

use crate::cgroup::Pinned;

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub server: String,
    pub offered: u64,
    pub secs: u64,
    pub sent: u64,
    pub answered: u64,
    pub answered_per_s: f64,
    pub answer_ratio: f64,
    pub server_cpu_s: f64,
    /// Server CPU per answered query, nanoseconds.
    pub cpu_ns_per_answer: f64,
    /// Where losses were seen: counter deltas (server veth ethtool stats with
    /// "drop" in the name, UDP receive-buffer errors).
    pub losses: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Closed {
    pub server: String,
    /// "udp" or "tcp".
    pub transport: String,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    pub avg_latency_us: f64,
    /// Server CPU per completed query, nanoseconds.
    pub cpu_ns_per_answer: f64,
}

fn counters(lab: &Lab) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    if let Ok(out) = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, "ethtool", "-S", SERVER_IF])
        .output()
    {
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = l.trim().split_once(':')
                && k.contains("drop")
                && let Ok(v) = v.trim().parse()
            {
                m.insert(format!("veth {k}"), v);
            }
        }
    }
    m.insert("udp RcvbufErrors".into(), lab_snmp(lab, "RcvbufErrors"));
    m
}

fn lab_snmp(lab: &Lab, field: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, "cat", "/proc/net/snmp"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    match (rows.first(), rows.get(1)) {
        (Some(h), Some(v)) => h
            .split_whitespace()
            .zip(v.split_whitespace())
            .find(|(k, _)| *k == field)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn grab(text: &str, key: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {key:?} in:\n{text}"))
}

/// A command in the client namespace, in the generator's cgroup. The
/// cgroup is joined before `ip netns exec`: that remounts /sys, which hides
/// the cgroup hierarchies from the command it runs.
fn generator(lab: &Lab, gen_: &Pinned) -> Command {
    generator_in(&lab.client_ns, gen_)
}

/// A command in namespace `ns`, in the generator's cgroup.
fn generator_in(ns: &str, gen_: &Pinned) -> Command {
    let wrap = gen_.wrap();
    let mut cmd = Command::new(&wrap[0]);
    cmd.args(&wrap[1..]).args(["ip", "netns", "exec", ns]);
    cmd
}

/// kxdpgun at `rate` for `secs`, pinned to the generator's cgroup and CPU;
/// answers with another rcode than `expect` are shown with the losses.
#[allow(clippy::too_many_arguments)]
pub fn open_loop(
    lab: &Lab,
    server: &str,
    srv: &Pinned,
    gen_: &Pinned,
    queries: &Path,
    rate: u64,
    secs: u64,
    expect: &str,
) -> anyhow::Result<Point> {
    let before = counters(lab);
    let cpu0 = srv.cpu_seconds()?;
    let out = generator(lab, gen_)
        .args([
            "kxdpgun",
            "-t",
            &secs.to_string(),
            "-Q",
            &rate.to_string(),
            "-I",
            CLIENT_IF,
        ])
        .args(["-F", &gen_.cpu.to_string(), "-i"])
        .arg(queries)
        .arg(SERVER_V4)
        .output()?;
    let cpu = srv.cpu_seconds()? - cpu0;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("kxdpgun at {rate}/s against {server}:\n{text}");
    }
    let sent = grab(&text, "total queries:")? as u64;
    let answered = grab(&text, "total replies:")? as u64;
    let after = counters(lab);
    let mut losses: BTreeMap<String, u64> = after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .filter(|(_, d)| *d > 0)
        .collect();
    // Every server answers `expect` (REFUSED itself, or its backend does;
    // NOERROR for the cached names): other codes (SERVFAIL for a timeout
    // or a full pool) are answers that hide a failure, so they are shown
    // with the losses.
    for l in text.lines() {
        if let Some((code, n)) = l
            .trim()
            .strip_prefix("responded ")
            .and_then(|r| r.split_once(':'))
            && code != expect
            && let Ok(n) = n.trim().parse::<u64>()
        {
            losses.insert(format!("answered {code}"), n);
        }
    }
    Ok(Point {
        server: server.into(),
        offered: rate,
        secs,
        sent,
        answered,
        answered_per_s: answered as f64 / secs as f64,
        answer_ratio: if sent > 0 {
            answered as f64 / sent as f64
        } else {
            0.0
        },
        server_cpu_s: cpu,
        cpu_ns_per_answer: if answered > 0 {
            cpu * 1e9 / answered as f64
        } else {
            f64::NAN
        },
        losses,
    })
}

/// dnsperf, closed loop: a fixed number of outstanding queries, over UDP
/// or (`tcp`) over TCP.
pub fn closed_loop(
    lab: &Lab,
    server: &str,
    (srv, gen_): (&Pinned, &Pinned),
    queries: &Path,
    secs: u64,
    tcp: bool,
) -> anyhow::Result<Closed> {
    let cpu0 = srv.cpu_seconds()?;
    let out = generator(lab, gen_)
        .args(["dnsperf", "-m", if tcp { "tcp" } else { "udp" }])
        .args([
            "-s",
            SERVER_V4,
            "-l",
            &secs.to_string(),
            "-c",
            "8",
            "-q",
            "64",
            "-T",
            "1",
            "-d",
        ])
        .arg(queries)
        .output()?;
    let cpu = srv.cpu_seconds()? - cpu0;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let completed = grab(&text, "Queries completed:")? as u64;
    Ok(Closed {
        server: server.into(),
        transport: if tcp { "tcp" } else { "udp" }.into(),
        cpu_ns_per_answer: if completed > 0 {
            cpu * 1e9 / completed as f64
        } else {
            f64::NAN
        },
        completed,
        lost: grab(&text, "Queries lost:")? as u64,
        qps: grab(&text, "Queries per second:")?,
        avg_latency_us: grab(&text, "Average Latency (s):")? * 1e6,
    })
}

/// The attack case: kxdpgun from the client's address at `flood_qps` (more
/// than it can send: the generator's maximum), and a legitimate client
/// (dnsperf) at `legit_qps` from another address in a namespace of its own
/// behind the lab's switch, for `secs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attack {
    pub server: String,
    pub flood_sent: u64,
    pub flood_answered: u64,
    pub legit_sent: u64,
    pub legit_answered: u64,
    pub legit_ratio: f64,
    pub server_cpu_s: f64,
    pub secs: u64,
}

pub fn attack(
    lab: &Lab,
    server: &str,
    (srv, gen_): (&Pinned, &Pinned),
    queries: &Path,
    (legit_ns, legit_qps): (&str, u64),
    flood_qps: u64,
    secs: u64,
) -> anyhow::Result<Attack> {
    let cpu0 = srv.cpu_seconds()?;
    let flood = generator(lab, gen_)
        .args([
            "kxdpgun",
            "-t",
            &secs.to_string(),
            "-Q",
            &flood_qps.to_string(),
            "-I",
            CLIENT_IF,
        ])
        .args(["-F", &gen_.cpu.to_string(), "-i"])
        .arg(queries)
        .arg(SERVER_V4)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let legit = generator_in(legit_ns, gen_)
        .args(["dnsperf", "-s", SERVER_V4, "-l", &secs.to_string()])
        .args(["-t", "1", "-d"])
        .arg(queries)
        .args(["-Q", &legit_qps.to_string(), "-c", "8", "-q", "1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let out = flood.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("kxdpgun flood against {server}:\n{text}");
    }
    let totals = (
        grab(&text, "total queries:")? as u64,
        grab(&text, "total replies:")? as u64,
    );
    let out = legit.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cpu = srv.cpu_seconds()? - cpu0;
    let (ls, lc) = (
        grab(&text, "Queries sent:")? as u64,
        grab(&text, "Queries completed:")? as u64,
    );
    Ok(Attack {
        server: server.into(),
        flood_sent: totals.0,
        flood_answered: totals.1,
        legit_sent: ls,
        legit_answered: lc,
        legit_ratio: if ls > 0 { lc as f64 / ls as f64 } else { 0.0 },
        server_cpu_s: cpu,
        secs,
    })
}
