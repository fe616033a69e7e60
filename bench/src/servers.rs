//! The servers under test, each started in the lab's server namespace inside
//! the server cgroup, answering REFUSED to everything.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use xdpdns_netns_tests::{Lab, SERVER_IF, SERVER_V4, Server, wait_for};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    XdpdnsXsk,
    XdpdnsKernel,
    Dnsdist,
    KnotXdp,
    KnotUdp,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::XdpdnsXsk,
        Kind::XdpdnsKernel,
        Kind::Dnsdist,
        Kind::KnotXdp,
        Kind::KnotUdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::XdpdnsXsk => "xdpdns-afxdp",
            Kind::XdpdnsKernel => "xdpdns-kernel",
            Kind::Dnsdist => "dnsdist-1.7",
            Kind::KnotXdp => "knotd-xdp",
            Kind::KnotUdp => "knotd-udp",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
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
        Kind::XdpdnsXsk | Kind::XdpdnsKernel => {
            let xdp = if kind == Kind::XdpdnsKernel {
                "redirect = false"
            } else {
                ""
            };
            let xsk = format!("batch_size = {batch}");
            let config = lab
                .config_full("bench", xdp, &xsk, "")
                .replace("frames = 512", &format!("frames = {frames}"))
                .replace("stats_interval_ms = 200", "stats_interval_ms = 1000");
            Running::Xdpdns(Box::new(lab.start_with("bench", &config, wrap)?))
        }
        Kind::Dnsdist => {
            let conf = lab.dir.join("dnsdist.conf");
            fs::write(
                &conf,
                format!(
                    "setLocal(\"{SERVER_V4}:53\", {{reusePort=true}})\n\
                     setSecurityPollSuffix(\"\")\n\
                     setACL({{\"0.0.0.0/0\", \"::/0\"}})\n\
                     addAction(AllRule(), RCodeAction(DNSRCode.REFUSED))\n"
                ),
            )?;
            spawn(
                lab,
                wrap,
                "dnsdist",
                &[
                    "--supervised",
                    "--disable-syslog",
                    "-C",
                    conf.to_str().unwrap(),
                ],
            )?
        }
        Kind::KnotXdp | Kind::KnotUdp => {
            let run = lab.dir.join("knot");
            fs::create_dir_all(run.join("db"))?;
            let xdp = if kind == Kind::KnotXdp {
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
                     database:\n    storage: \"{r}/db\"\n",
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
