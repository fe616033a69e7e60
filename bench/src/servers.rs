//! The servers under test, each started in the lab's server namespace inside
//! the server cgroup, answering REFUSED to everything.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use xdpdns_netns_tests::{Lab, SERVER_IF, SERVER_V4, Server, wait_for};

/// The forwarding cases' backend: knotd in the client namespace (on the
/// generator's CPU; the server CPU holds only the server under test).
pub const BACKEND: &str = "192.0.2.10";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    XdpdnsXsk,
    /// As XdpdnsXsk, under 100 rules with a 100 k-name blocklist none of
    /// which matches the queries (the rules' cost, #14).
    XdpdnsRules,
    XdpdnsKernel,
    Dnsdist,
    KnotXdp,
    KnotUdp,
    /// Forwarding to a knotd backend.
    XdpdnsFwdXsk,
    XdpdnsFwdSocket,
    DnsdistFwd,
    /// REFUSED, with a per-client limit of [`ATTACK_QPS`] (above the legitimate client's rate): the attack case.
    XdpdnsLimits,
    DnsdistMaxQps,
    /// The cached case: 1,000 names, forwarded once to the knotd backend
    /// and then answered from the packet cache (dnsdist: newPacketCache);
    /// knotd answering them itself (XDP) beside.
    XdpdnsCache,
    DnsdistCache,
    KnotZone,
}

/// The attack case's per-client limit (queries/s).
pub const ATTACK_QPS: u32 = 15_000;

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::XdpdnsXsk,
        Kind::XdpdnsRules,
        Kind::XdpdnsKernel,
        Kind::Dnsdist,
        Kind::KnotXdp,
        Kind::KnotUdp,
    ];
    pub const FORWARDING: [Kind; 3] = [Kind::XdpdnsFwdXsk, Kind::XdpdnsFwdSocket, Kind::DnsdistFwd];
    pub const ATTACK: [Kind; 2] = [Kind::XdpdnsLimits, Kind::DnsdistMaxQps];
    pub const CACHED: [Kind; 3] = [Kind::XdpdnsCache, Kind::DnsdistCache, Kind::KnotZone];

    pub fn name(self) -> &'static str {
        match self {
            Kind::XdpdnsXsk => "xdpdns-afxdp",
            Kind::XdpdnsRules => "xdpdns-rules",
            Kind::XdpdnsKernel => "xdpdns-kernel",
            Kind::Dnsdist => "dnsdist-1.7",
            Kind::KnotXdp => "knotd-xdp",
            Kind::KnotUdp => "knotd-udp",
            Kind::XdpdnsFwdXsk => "xdpdns-fwd-afxdp",
            Kind::XdpdnsFwdSocket => "xdpdns-fwd-socket",
            Kind::DnsdistFwd => "dnsdist-fwd",
            Kind::XdpdnsLimits => "xdpdns-limits",
            Kind::DnsdistMaxQps => "dnsdist-maxqps",
            Kind::XdpdnsCache => "xdpdns-cache",
            Kind::DnsdistCache => "dnsdist-cache",
            Kind::KnotZone => "knotd-xdp-zone",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain(Kind::FORWARDING)
            .chain(Kind::ATTACK)
            .chain(Kind::CACHED)
            .find(|k| k.name() == s)
    }
}

/// A running server; stopped on drop.
pub enum Running {
    Xdpdns(Box<Server>),
    Process(Process),
}

/// A peer server process, killed on drop (also on error paths).
pub struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Dataplane pids (xdpdns only), for memory figures.
    pub fn dataplane_pids(&self) -> Vec<u32> {
        match self {
            Running::Xdpdns(s) => s.dataplane_pids().unwrap_or_default(),
            Running::Process(_) => Vec::new(),
        }
    }

    /// xdpdns' `status --json` totals (for BENCH_VERBOSE).
    pub fn totals(&self) -> Option<serde_json::Value> {
        match self {
            Running::Xdpdns(s) => s
                .status()
                .ok()
                .map(|v| serde_json::json!({"totals": v["totals"], "backends": v["backends"]})),
            Running::Process(_) => None,
        }
    }

    pub fn stop(self) -> anyhow::Result<()> {
        match self {
            Running::Xdpdns(mut s) => {
                s.stop()?;
            }
            Running::Process(mut p) => {
                // SIGTERM, then give it a moment before the SIGKILL of drop.
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
                let _ = wait_for(Duration::from_secs(5), "server exit", || {
                    p.0.try_wait().ok().flatten()
                });
            }
        }
        Ok(())
    }
}

pub fn start(
    kind: Kind,
    lab: &Lab,
    wrap: &[String],
    frames: u32,
    batch: u32,
) -> anyhow::Result<Running> {
    let running = match kind {
        Kind::XdpdnsXsk | Kind::XdpdnsRules | Kind::XdpdnsKernel | Kind::XdpdnsLimits => {
            let xdp = if kind == Kind::XdpdnsKernel {
                "redirect = false"
            } else {
                ""
            };
            let mut extra = std::env::var("BENCH_EXTRA").unwrap_or_default();
            if kind == Kind::XdpdnsRules {
                let path = lab.dir.join("blocklist.txt");
                let (rules, blocklist) =
                    xdpdns_dataplane::testing::production_rules_toml(&path.to_string_lossy());
                fs::write(&path, blocklist)?;
                extra.push('\n');
                extra.push_str(&rules);
            }
            if kind == Kind::XdpdnsLimits {
                extra.push_str(&format!(
                    "\n[limits]\nqps_per_client = {ATTACK_QPS}\nburst = {ATTACK_QPS}\n"
                ));
            }
            let xsk = format!(
                "batch_size = {batch}\n{}",
                std::env::var("BENCH_XSK_EXTRA").unwrap_or_default()
            );
            let config = lab
                .config_full("bench", xdp, &xsk, &extra)
                .replace("frames = 512", &format!("frames = {frames}"))
                .replace("stats_interval_ms = 200", "stats_interval_ms = 1000");
            Running::Xdpdns(Box::new(lab.start_with("bench", &config, wrap)?))
        }
        Kind::XdpdnsFwdXsk | Kind::XdpdnsFwdSocket | Kind::XdpdnsCache => {
            let xsk = if kind == Kind::XdpdnsFwdSocket {
                "false"
            } else {
                "true"
            };
            let mut backend = format!(
                "[[backend]]\naddress = \"{BACKEND}:53\"\nxsk = {xsk}\n[backend.health]\nqname = \"www.example.test.\"\n"
            );
            if kind == Kind::XdpdnsCache {
                let entries: u32 = std::env::var("BENCH_CACHE_ENTRIES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(8192);
                backend.push_str(&format!("[cache]\nentries = {entries}\n"));
            }
            if let Ok(lines) = std::env::var("BENCH_FORWARDING") {
                backend.push_str(&format!("[forwarding]\n{lines}\n"));
            }
            let config = lab
                .config_full("bench", "", &format!("batch_size = {batch}"), &backend)
                .replace("frames = 512", &format!("frames = {frames}"))
                .replace("stats_interval_ms = 200", "stats_interval_ms = 1000");
            let server = lab.start_with("bench", &config, wrap)?;
            server.wait_status("the backend up", |s| s["backends"][0]["up"] == true)?;
            Running::Xdpdns(Box::new(server))
        }
        Kind::DnsdistFwd => dnsdist(
            lab,
            wrap,
            "dnsdist-fwd",
            &format!("newServer({{address=\"{BACKEND}:53\", checkName=\"www.example.test.\"}})"),
        )?,
        Kind::DnsdistCache => dnsdist(
            lab,
            wrap,
            "dnsdist-cache",
            &format!(
                "newServer({{address=\"{BACKEND}:53\", checkName=\"www.example.test.\"}})\n\
                 getPool(\"\"):setCache(newPacketCache(65536))"
            ),
        )?,
        Kind::Dnsdist => dnsdist(
            lab,
            wrap,
            "dnsdist",
            "addAction(AllRule(), RCodeAction(DNSRCode.REFUSED))",
        )?,
        Kind::DnsdistMaxQps => dnsdist(
            lab,
            wrap,
            "dnsdist-maxqps",
            &format!(
                "addAction(MaxQPSIPRule({ATTACK_QPS}), DropAction())\n\
                 addAction(AllRule(), RCodeAction(DNSRCode.REFUSED))"
            ),
        )?,
        Kind::KnotXdp | Kind::KnotUdp | Kind::KnotZone => {
            let run = lab.dir.join("knot");
            fs::create_dir_all(run.join("db"))?;
            let zone = if kind == Kind::KnotZone {
                fs::write(run.join("example.test.zone"), Lab::zone_text("", 1))?;
                format!(
                    "zone:\n  - domain: example.test\n    storage: \"{}\"\n    file: example.test.zone\n",
                    run.display()
                )
            } else {
                String::new()
            };
            let xdp = if kind != Kind::KnotUdp {
                format!("xdp:\n    listen: {SERVER_IF}\n")
            } else {
                String::new()
            };
            let conf = run.join("knot.conf");
            fs::write(
                &conf,
                format!(
                    "server:\n    rundir: \"{r}\"\n    listen: {SERVER_V4}@53\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n{xdp}\
                     log:\n  - target: stderr\n    any: warning\n\
                     database:\n    storage: \"{r}/db\"\n{zone}",
                    r = run.display()
                ),
            )?;
            spawn(lab, wrap, "knotd", &["-c", conf.to_str().unwrap()])?
        }
    };
    // Ready when it answers.
    let v4 = format!("@{SERVER_V4}");
    wait_for(
        Duration::from_secs(15),
        &format!("{} to answer", kind.name()),
        || (lab.kdig(&[&v4, "ready.example"]) == "REFUSED").then_some(()),
    )
    .with_context(|| format!("{} did not come up", kind.name()))?;
    Ok(running)
}

/// dnsdist 1.7 on the listen address with reuseport, and `action` (a
/// rule, or a backend) as the rest of its configuration.
fn dnsdist(lab: &Lab, wrap: &[String], name: &str, action: &str) -> anyhow::Result<Running> {
    let conf = lab.dir.join(format!("{name}.conf"));
    fs::write(
        &conf,
        format!(
            "setLocal(\"{SERVER_V4}:53\", {{reusePort=true}})\n\
             setSecurityPollSuffix(\"\")\n\
             setACL({{\"0.0.0.0/0\", \"::/0\"}})\n\
             {action}\n"
        ),
    )?;
    let conf = conf.to_str().context("lab path is not UTF-8")?;
    spawn(
        lab,
        wrap,
        "dnsdist",
        &["--supervised", "--disable-syslog", "-C", conf],
    )
}

fn spawn(lab: &Lab, wrap: &[String], program: &str, args: &[&str]) -> anyhow::Result<Running> {
    let log = fs::File::create(lab.dir.join(format!("{program}.log")))?;
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.server_ns))
        .args(wrap)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!("starting {program} (apt-get install it, or `make bench-deps`)")
        })?;
    let mut process = Process(child);
    if let Some(st) = process.0.try_wait()? {
        bail!("{program} exited at once ({st})");
    }
    Ok(Running::Process(process))
}
