//! CPU pinning and CPU accounting with cgroups (v1 cpuset+cpuacct, or v2):
//! taskset alone does not hold every thread of every server.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// A cgroup pinned to one CPU, whose CPU time can be read.
pub struct Pinned {
    /// Directories a process joins (one per v1 hierarchy, or the v2 one).
    dirs: Vec<PathBuf>,
    usage: Usage,
    pub cpu: u32,
}

enum Usage {
    /// v1 cpuacct.usage, nanoseconds.
    V1(PathBuf),
    /// v2 cpu.stat usage_usec.
    V2(PathBuf),
}

impl Pinned {
    pub fn new(name: &str, cpu: u32) -> anyhow::Result<Pinned> {
        let v1 = PathBuf::from("/sys/fs/cgroup/cpuset");
        if v1.join("cpuset.cpus").exists() {
            let cpuset = v1.join(name);
            let acct = PathBuf::from("/sys/fs/cgroup/cpuacct").join(name);
            fs::create_dir_all(&cpuset)?;
            fs::create_dir_all(&acct)?;
            fs::write(cpuset.join("cpuset.cpus"), cpu.to_string())?;
            let mems = fs::read_to_string(v1.join("cpuset.mems"))?;
            fs::write(cpuset.join("cpuset.mems"), mems.trim())?;
            return Ok(Pinned {
                usage: Usage::V1(acct.join("cpuacct.usage")),
                dirs: vec![cpuset, acct],
                cpu,
            });
        }
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let controllers = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.contains("cpuset") {
            bail!(
                "no cpuset controller (cgroup v1 /sys/fs/cgroup/cpuset or v2 with cpuset) to pin servers with"
            );
        }
        let _ = fs::write(v2.join("cgroup.subtree_control"), "+cpuset +cpu");
        let dir = v2.join(name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("cpuset.cpus"), cpu.to_string())?;
        Ok(Pinned {
            usage: Usage::V2(dir.join("cpu.stat")),
            dirs: vec![dir],
            cpu,
        })
    }

    /// A command prefix that moves the shell into this cgroup, then execs
    /// the rest: `sh -c '...; exec "$@"' --`.
    pub fn wrap(&self) -> Vec<String> {
        let joins: Vec<String> = self
            .dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs", d.display()))
            .collect();
        vec![
            "sh".into(),
            "-c".into(),
            format!("{}; exec \"$@\"", joins.join("; ")),
            "--".into(),
        ]
    }

    /// CPU time used by the cgroup's processes so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        match &self.usage {
            Usage::V1(p) => Ok(fs::read_to_string(p)?.trim().parse::<f64>()? / 1e9),
            Usage::V2(p) => {
                let text = fs::read_to_string(p)?;
                let usec = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .context("no usage_usec")?;
                Ok(usec.trim().parse::<f64>()? / 1e6)
            }
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for d in &self.dirs {
            // Processes are gone by now; an empty cgroup can be removed.
            let _ = fs::remove_dir(d);
        }
    }
}
