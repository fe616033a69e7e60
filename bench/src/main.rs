//! `xdpdns-bench` (run by `make bench`, as root): xdpdns over AF_XDP (also
//! under 100 rules with a 100 k-name blocklist: xdpdns-rules), xdpdns
//! on the kernel path, dnsdist 1.7 and knotd (XDP and UDP), each answering
//! REFUSED on the same veth lab, server pinned to one CPU and kxdpgun/dnsperf
//! to another. Prints a table with ratios against xdpdns-AF_XDP and writes
//! CSV, JSON and a PNG plot under target/bench/.
//!
//! Environment: BENCH_RATES (default 100000,300000,1000000), BENCH_SECS (10),
//! BENCH_RUNS (3, the median is kept), BENCH_SERVERS (all; comma-separated
//! names), BENCH_DNSPERF_SECS (10), BENCH_FRAMES (2048), BENCH_BATCH (64),
//! BENCH_SERVER_CPU (0), BENCH_GEN_CPU (1), BENCH_FWD_RATES (100000,300000:
//! the forwarding cases, whose knotd backend shares the generator's CPU),
//! BENCH_BACKEND_NICE (-10: that backend's niceness, so that the generator,
//! which wants more of the shared CPU the more it is asked to send, does not
//! starve it: the forwarding cases past saturation measure the forwarder, not
//! how the scheduler splits CPU 1; 0 to share it evenly),
//! BENCH_FORWARDING (lines for the forwarding cases' `[forwarding]`, e.g.
//! `ports = 1`), BENCH_XSK_EXTRA and BENCH_EXTRA (lines for `[xsk]` and the
//! end of the REFUSED cases' configuration): levers compared in one run.
//!
//! The forwarding cases (xdpdns-fwd-afxdp, xdpdns-fwd-socket, dnsdist-fwd)
//! relay every query to one knotd backend in the client namespace.
//!
//! The cached cases (xdpdns-cache, dnsdist-cache with newPacketCache, and
//! knotd-xdp-zone answering the zone itself) ask 1,000 names the backend's
//! zone answers, at BENCH_CACHE_RATES (300000,1000000), after a warm-up of
//! one second at 20,000 q/s that caches them all. BENCH_CACHE_ENTRIES
//! (8192: room for the names without bucket overflow) sizes xdpdns' cache;
//! dnsdist's newPacketCache(65536) allocates as it fills.
//!
//! The attack cases (xdpdns-limits, dnsdist-maxqps: a limit of 15,000 q/s per
//! client, dropped in XDP or by MaxQPSIPRule in userspace) run kxdpgun from
//! one address at BENCH_ATTACK_FLOOD_QPS (10,000,000: more than it can send,
//! so at the generator's maximum) while a legitimate client (dnsperf) sends
//! BENCH_ATTACK_LEGIT_QPS (10000) from another, for BENCH_SECS. The
//! legitimate client sits in a namespace of its own behind a switch (a
//! bridge) so that kxdpgun's XDP program does not take its answers; the
//! switch goes in before the first attack case, so the attack cases run
//! after all the others whatever the order of BENCH_SERVERS.

mod cgroup;
mod measure;
mod report;
mod servers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use xdpdns_netns_tests::{Lab, repo_root};

use crate::cgroup::Pinned;
use crate::measure::Point;
use crate::report::Report;
use crate::servers::Kind;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of offered rates from `var`, or `default`.
fn rates_from(var: &str, default: &str) -> anyhow::Result<Vec<u64>> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|r| r.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{var}: a comma-separated list of queries/s"))
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (namespaces, XDP, cgroups)");
    }
    let rates = rates_from("BENCH_RATES", "100000,300000,1000000")?;
    let secs: u64 = env("BENCH_SECS", 10);
    let runs: usize = env("BENCH_RUNS", 3);
    let dnsperf_secs: u64 = env("BENCH_DNSPERF_SECS", 10);
    let frames: u32 = env("BENCH_FRAMES", 2048);
    let batch: u32 = env("BENCH_BATCH", 64);
    let mut kinds: Vec<Kind> = match std::env::var("BENCH_SERVERS") {
        Ok(list) => list
            .split(',')
            .map(|s| Kind::parse(s.trim()).with_context(|| format!("unknown server {s:?}")))
            .collect::<anyhow::Result<_>>()?,
        Err(_) => Kind::ALL
            .into_iter()
            .chain(Kind::FORWARDING)
            .chain(Kind::CACHED)
            .chain(Kind::ATTACK)
            .collect(),
    };
    // The attack cases last: they put a switch into the lab (stable: the
    // others keep their order).
    kinds.sort_by_key(|k| Kind::ATTACK.contains(k));
    let fwd_rates = rates_from("BENCH_FWD_RATES", "100000,300000")?;
    let cache_rates = rates_from("BENCH_CACHE_RATES", "300000,1000000")?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_flag(sig, &stop)?;
    }

    let lab = Lab::new("bench")?;
    // kxdpgun listens on the client's queue 0 only: the servers' kernel
    // stack must answer on that queue too.
    lab.steer_server_to_queue(0)?;
    let queries = lab.query_file(100_000)?;
    // The cached case's names: 1,000, all answered by the backend's zone.
    let cached_names = lab.dir.join("cached-names.txt");
    std::fs::write(
        &cached_names,
        (0..1000)
            .map(|i| format!("n{i}.cached.example.test A\n"))
            .collect::<String>(),
    )?;
    let srv = Pinned::new("xdpdns-bench-server", env("BENCH_SERVER_CPU", 0))?;
    let gen_ = Pinned::new("xdpdns-bench-gen", env("BENCH_GEN_CPU", 1))?;
    // The forwarding cases' backend: knotd (UDP) in the client namespace,
    // sharing the generator's CPU.
    let needs_backend = |k: &Kind| {
        Kind::FORWARDING.contains(k) || (Kind::CACHED.contains(k) && *k != Kind::KnotZone)
    };
    let _backend = if kinds.iter().any(needs_backend) {
        // The backend's replies, and so the answers of the dataplane that
        // receives them, on queue 0, the only one kxdpgun listens on (a NIC
        // would not care on which queue an answer leaves; a veth pair maps
        // TX queue N to the peer's RX queue N).
        lab.steer_client_to_queue(0)?;
        lab.client_addr(
            &format!("{}/24", servers::BACKEND),
            xdpdns_netns_tests::CLIENT_IF,
        )?;
        let ns = lab.client_ns.clone();
        let knot = lab.knot_pinned(
            &ns,
            "backend",
            &[&format!("{}@53", servers::BACKEND)],
            gen_.cpu,
        )?;
        let nice: i32 = env("BENCH_BACKEND_NICE", -10);
        if nice != 0 {
            knot.renice(nice)?;
        }
        Some(knot)
    } else {
        None
    };
    const LEGIT: &str = "192.0.2.3";
    let mut legit_ns: Option<String> = None;
    eprintln!(
        "servers on CPU {}, generator on CPU {}; {secs} s per point, median of {runs}",
        srv.cpu, gen_.cpu
    );

    let mut report = Report {
        cpus: format!("server {} / generator {}", srv.cpu, gen_.cpu),
        secs,
        runs,
        points: Vec::new(),
        closed: Vec::new(),
        dataplane_rss: Vec::new(),
        umem_bytes_per_queue: u64::from(frames) * 2048,
        attack: Vec::new(),
    };
    for kind in kinds {
        if Kind::ATTACK.contains(&kind) && legit_ns.is_none() {
            let ns = lab.add_switched_client(&format!("{LEGIT}/24"))?;
            // The client's queue 0, the one kxdpgun listens on, again.
            lab.steer_client_to_queue(0)?;
            legit_ns = Some(ns);
        }
        let running = servers::start(kind, &lab, &srv.wrap(), frames, batch)?;
        if let (true, Some(ns)) = (Kind::ATTACK.contains(&kind), legit_ns.as_deref()) {
            let a = measure::attack(
                &lab,
                kind.name(),
                (&srv, &gen_),
                &queries,
                (ns, env("BENCH_ATTACK_LEGIT_QPS", 10_000)),
                env("BENCH_ATTACK_FLOOD_QPS", 10_000_000),
                secs,
            )?;
            eprintln!(
                "{:<14} flood {:.0}/s sent, {:.0}/s answered; legitimate {}/{} ({:.2}%)",
                a.server,
                a.flood_sent as f64 / secs as f64,
                a.flood_answered as f64 / secs as f64,
                a.legit_answered,
                a.legit_sent,
                a.legit_ratio * 100.0
            );
            report.attack.push(a);
            running.stop()?;
            continue;
        }
        let cached = Kind::CACHED.contains(&kind);
        let rates = if Kind::FORWARDING.contains(&kind) {
            &fwd_rates
        } else if cached {
            &cache_rates
        } else {
            &rates
        };
        let (file, expect) = if cached {
            (&cached_names, "NOERROR")
        } else {
            (&queries, "REFUSED")
        };
        if cached {
            // Warm-up: every name asked (and cached) before measuring.
            measure::open_loop(&lab, kind.name(), &srv, &gen_, file, 20_000, 1, expect)?;
        }
        for &rate in rates {
            let mut samples: Vec<Point> = Vec::new();
            for _ in 0..runs {
                if stop.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                samples.push(measure::open_loop(
                    &lab,
                    kind.name(),
                    &srv,
                    &gen_,
                    file,
                    rate,
                    secs,
                    expect,
                )?);
            }
            if std::env::var_os("BENCH_VERBOSE").is_some()
                && let Some(t) = running.totals()
            {
                eprintln!("{} after {rate}/s: {t:#}", kind.name());
            }
            samples.sort_by(|a, b| a.answered_per_s.total_cmp(&b.answered_per_s));
            let median = samples.swap_remove(samples.len() / 2);
            eprintln!(
                "{:<14} offered {:>8}: answered {:>9.0}/s ({:.1}%), server CPU {:.0}%",
                median.server,
                rate,
                median.answered_per_s,
                median.answer_ratio * 100.0,
                median.server_cpu_s * 100.0 / secs as f64
            );
            report.points.push(median);
        }
        for tcp in [false, true] {
            if dnsperf_secs > 0 && !stop.load(Ordering::Relaxed) {
                report.closed.push(measure::closed_loop(
                    &lab,
                    kind.name(),
                    (&srv, &gen_),
                    file,
                    dnsperf_secs,
                    tcp,
                )?);
            }
        }
        if kind == Kind::XdpdnsXsk {
            for pid in running.dataplane_pids() {
                let kib = |f: &str| {
                    xdpdns_netns_tests::proc_status(pid, f)
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                        .unwrap_or(0)
                };
                report
                    .dataplane_rss
                    .push((pid, kib("VmRSS"), kib("RssAnon")));
            }
        }
        running.stop()?;
        // knotd, killed if it does not stop in time, can leave its XDP
        // program behind: the next server must find the interface bare.
        let _ = std::process::Command::new("ip")
            .args(["-n", &lab.server_ns, "link", "set", "dev"])
            .arg(xdpdns_netns_tests::SERVER_IF)
            .args(["xdp", "off"])
            .status();
    }

    let out = repo_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let table = report::table(&report);
    println!("{table}");
    std::fs::write(out.join("results.txt"), &table)?;
    std::fs::write(out.join("results.csv"), report::csv(&report))?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    match std::fs::read(FONT) {
        Ok(font) => report::plot(&report, &out.join("answered.png"), &font)?,
        Err(e) => eprintln!("no plot: {FONT}: {e} (apt-get install fonts-dejavu-core)"),
    }
    println!("results in {}", out.display());
    Ok(())
}

/// Sets `flag` on `sig` (checked between measurements, so the lab is
/// always torn down by its Drop).
fn signal_flag(sig: libc::c_int, flag: &Arc<AtomicBool>) -> anyhow::Result<()> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let _ = FLAG.set(flag.clone());
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::Relaxed);
        }
    }
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    let r = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    if r == libc::SIG_ERR {
        bail!("cannot install a handler for signal {sig}");
    }
    Ok(())
}
