//! Harness for xdpdns end-to-end tests: network namespaces joined by a veth
//! pair, the real loader and dataplanes, real DNS clients. Needs root.
//!
//! Every lab has uniquely named namespaces, instance and pin directory, and
//! removes all of them on drop — also when the test fails.

pub mod frames;

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub const SERVER_V4: &str = "192.0.2.1";
pub const CLIENT_V4: &str = "192.0.2.2";
pub const SERVER_V6: &str = "2001:db8::1";
pub const CLIENT_V6: &str = "2001:db8::2";
/// The ACL lab configurations get: the lab's documentation prefixes, which
/// dnsdist's default list (ours too) leaves out.
pub const LAB_ACL: &str = "[acl]\nallow = [\"192.0.2.0/24\", \"2001:db8::/64\"]\n";
pub const SERVER_IF: &str = "srv0";
pub const CLIENT_IF: &str = "cli0";
/// The dataplanes' user in every lab (from the lab's own user database).
pub const DATAPLANE_USER: &str = "xdpdns-dp";
/// The loader's user when a test runs it unprivileged (see [`Users`]).
pub const LOADER_USER: &str = "xdpdns";
/// The TCP workers' and metrics exporter's user (the default `tcp.user`).
pub const TCP_USER: &str = "xdpdns-tcp";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Fails with one clear line unless running as root: every test here needs
/// network namespaces, XDP and bpffs. (`cargo test` skips them: they are
/// `#[ignore]`d; `make test` runs them with `--ignored`.)
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this test needs root (network namespaces, XDP, bpffs): run it with `make test`");
    }
    Ok(())
}

/// The users a lab's processes see: the host's user database plus the
/// xdpdns users with free ids, in files bind-mounted over /etc/passwd and
/// /etc/group in a private mount namespace for the processes that need them
/// (the loader, `xdpdns check`). The host's database is never changed.
#[derive(Debug, Clone)]
pub struct Users {
    pub loader_uid: u32,
    pub dataplane_uid: u32,
    pub tcp_uid: u32,
    passwd: PathBuf,
    group: PathBuf,
}

impl Users {
    fn create(dir: &Path) -> anyhow::Result<Users> {
        let passwd = fs::read_to_string("/etc/passwd")?;
        let group = fs::read_to_string("/etc/group")?;
        let taken = |text: &str, id: u32| {
            text.lines()
                .any(|l| l.split(':').nth(2) == Some(id.to_string().as_str()))
        };
        let mut free = (61000u32..64000).filter(|id| !taken(&passwd, *id) && !taken(&group, *id));
        let (loader_uid, dataplane_uid, tcp_uid) = (
            free.next().context("no free uid")?,
            free.next().context("no free uid")?,
            free.next().context("no free uid")?,
        );
        let mut p = passwd.trim_end().to_string();
        let mut g = group.trim_end().to_string();
        for (name, id) in [
            (LOADER_USER, loader_uid),
            (DATAPLANE_USER, dataplane_uid),
            (TCP_USER, tcp_uid),
        ] {
            p.push_str(&format!(
                "\n{name}:x:{id}:{id}:{name}:/nonexistent:/usr/sbin/nologin"
            ));
            g.push_str(&format!("\n{name}:x:{id}:"));
        }
        let users = Users {
            loader_uid,
            dataplane_uid,
            tcp_uid,
            passwd: dir.join("passwd"),
            group: dir.join("group"),
        };
        fs::write(&users.passwd, p + "\n")?;
        fs::write(&users.group, g + "\n")?;
        Ok(users)
    }

    /// A command prefix that runs the rest with these users visible.
    pub fn prefix(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-ec",
            "mount --bind \"$1\" /etc/passwd; mount --bind \"$2\" /etc/group; shift 2; exec \"$@\"",
            "sh",
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        v.push(self.passwd.clone().into());
        v.push(self.group.clone().into());
        v
    }
}

/// Directory holding `xdpdns` and `xdpdns-dataplane`: $XDPDNS_BIN_DIR, or
/// the cargo target directory these tests were built into.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDPDNS_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // A test is target/<profile>/deps/<test>; a tool is target/<profile>/<tool>.
    let beside = exe.parent().expect("executable directory");
    if beside.join("xdpdns").exists() {
        return beside.to_path_buf();
    }
    beside.parent().expect("target dir").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; `make test` does)",
        p.display()
    );
    p
}

/// Runs a command, failing with its output if it fails.
pub fn sh(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    sh(Command::new("ip").args(args))
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
/// Waits up to 10 s for a status (`status`) that `pred` accepts; on a
/// timeout the error carries `log()` and the last status seen.
fn wait_status_of(
    what: &str,
    status: impl Fn() -> anyhow::Result<Value>,
    pred: impl Fn(&Value) -> bool,
    log: impl Fn() -> String,
) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    wait_for(Duration::from_secs(10), what, || {
        let s = status().ok()?;
        let ok = pred(&s);
        last = s.clone();
        ok.then_some(s)
    })
    .with_context(|| format!("{}\nlast status: {last:#}", log()))
}

pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two namespaces, `srv0` <-> `cli0` with two queues each, addresses set.
pub struct Lab {
    pub name: String,
    pub server_ns: String,
    pub client_ns: String,
    pub dir: PathBuf,
    pub pin_root: PathBuf,
    pub runtime_dir: PathBuf,
    pub users: Users,
    /// A bpffs of the lab's own, where the host has none mounted at
    /// /sys/fs/bpf (the loaders run in private mount namespaces: one they
    /// mounted themselves would be invisible to the test).
    bpffs: Option<Bpffs>,
}

impl Lab {
    pub fn new(test: &str) -> anyhow::Result<Lab> {
        require_root()?;
        let name = format!(
            "xdt-{test}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&name);
        fs::create_dir_all(&dir)?;
        let users = Users::create(&dir)?;
        let mut lab = Lab {
            server_ns: format!("{name}-s"),
            client_ns: format!("{name}-c"),
            pin_root: PathBuf::from("/sys/fs/bpf").join(&name),
            runtime_dir: dir.join("run"),
            dir,
            name,
            users,
            bpffs: None,
        };
        // From here on, Drop cleans up whatever was made.
        let host_bpffs = nix::sys::statfs::statfs("/sys/fs/bpf")
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
        if !host_bpffs {
            let b = Bpffs(lab.dir.join("bpffs"));
            fs::create_dir_all(&b.0)?;
            lab.pin_root = b.0.join(&lab.name);
            lab.bpffs = Some(b);
            sh(Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(lab.dir.join("bpffs")))
            .context("mounting the lab's bpffs")?;
        }
        lab.build().context("building the veth lab")?;
        Ok(lab)
    }

    fn build(&self) -> anyhow::Result<()> {
        let (s, c) = (self.server_ns.as_str(), self.client_ns.as_str());
        ip(&["netns", "add", s])?;
        ip(&["netns", "add", c])?;
        self.veth(SERVER_IF, CLIENT_IF)?;
        for (ns, ifname, v4, v6) in [
            (s, SERVER_IF, SERVER_V4, SERVER_V6),
            (c, CLIENT_IF, CLIENT_V4, CLIENT_V6),
        ] {
            ns_addr(ns, &format!("{v4}/24"), ifname)?;
            ns_addr(ns, &format!("{v6}/64"), ifname)?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// A veth pair with 2 queues a side, `srv` in the server namespace and
    /// `cli` in the client's, both up.
    fn veth(&self, srv: &str, cli: &str) -> anyhow::Result<()> {
        let (s, c) = (self.server_ns.as_str(), self.client_ns.as_str());
        let two = ["numtxqueues", "2", "numrxqueues", "2"];
        let mut args = vec!["-n", s, "link", "add", srv];
        args.extend(two);
        args.extend(["type", "veth", "peer", "name", cli, "netns", c]);
        args.extend(two);
        ip(&args)?;
        ip(&["-n", s, "link", "set", srv, "up"])?;
        ip(&["-n", c, "link", "set", cli, "up"])?;
        // The client's TX checksum offload stays on, as on any veth or
        // container network: its UDP reaches XDP with partial checksums.
        Ok(())
    }

    /// Turns the client's TX checksum offload off on `cli`: its frames then
    /// carry full checksums, as frames from a real wire do.
    pub fn offload_off(&self, cli: &str) -> anyhow::Result<()> {
        sh(Command::new("ip").args([
            "netns",
            "exec",
            &self.client_ns,
            "ethtool",
            "-K",
            cli,
            "tx",
            "off",
        ]))?;
        Ok(())
    }

    /// A second veth pair (`srv1` <-> `cli1`, 192.0.2.129/.130) in the same namespaces.
    pub fn add_second_pair(&self) -> anyhow::Result<()> {
        self.veth("srv1", "cli1")?;
        ns_addr(&self.server_ns, "192.0.2.129/25", "srv1")?;
        ns_addr(&self.client_ns, "192.0.2.130/25", "cli1")?;
        Ok(())
    }

    /// Puts a switch between the server and the client: a bridge in a
    /// third namespace (`<lab>-w`) with the server's `srv0` peer, a new
    /// `cli0` for the client (its addresses as before) and a second client
    /// namespace (returned, `<lab>-l`) whose `leg0` has `cidr`. On a wire a
    /// client's XDP program sees only its own traffic; on a veth pair it
    /// would see the other client's answers too. Frames the switch sends a
    /// client leave on queue 0 (kxdpgun listens there). Call it before
    /// anything else uses `cli0`.
    pub fn add_switched_client(&self, cidr: &str) -> anyhow::Result<String> {
        let (w, l, c) = (self.switch_ns(), self.legit_ns(), self.client_ns.as_str());
        ip(&["netns", "add", &w])?;
        ip(&["netns", "add", &l])?;
        ip(&["-n", &w, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &w, "link", "set", "br0", "up"])?;
        ip(&["-n", c, "link", "set", CLIENT_IF, "netns", &w])?;
        ip(&["-n", &w, "link", "set", CLIENT_IF, "name", "sw0"])?;
        let two = ["numtxqueues", "2", "numrxqueues", "2"];
        for (ns, ifname, port) in [(c, CLIENT_IF, "sw1"), (l.as_str(), "leg0", "sw2")] {
            let mut args = vec!["-n", ns, "link", "add", ifname];
            args.extend(two);
            args.extend(["type", "veth", "peer", "name", port, "netns", &w]);
            args.extend(two);
            ip(&args)?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        for port in ["sw0", "sw1", "sw2"] {
            ip(&["-n", &w, "link", "set", port, "master", "br0", "up"])?;
        }
        // Frames the server's XDP program sends back with XDP_TX reach the
        // switch only if its port takes them in NAPI (GRO on).
        sh(Command::new("ip").args(["netns", "exec", &w, "ethtool", "-K", "sw0", "gro", "on"]))?;
        self.steer(&w, "sw1", 0)?;
        self.steer(&w, "sw2", 0)?;
        ns_addr(c, &format!("{CLIENT_V4}/24"), CLIENT_IF)?;
        ns_addr(c, &format!("{CLIENT_V6}/64"), CLIENT_IF)?;
        ns_addr(&l, cidr, "leg0")?;
        ip(&["-n", &l, "link", "set", "lo", "up"])?;
        Ok(l)
    }

    fn switch_ns(&self) -> String {
        format!("{}-w", self.name)
    }

    fn legit_ns(&self) -> String {
        format!("{}-l", self.name)
    }

    /// Sets the MTU of both ends of the lab's veth pair.
    pub fn set_mtu(&self, mtu: u32) -> anyhow::Result<()> {
        let mtu = mtu.to_string();
        for (ns, ifname) in [(&self.server_ns, SERVER_IF), (&self.client_ns, CLIENT_IF)] {
            ip(&["-n", ns, "link", "set", ifname, "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Runs a command in the client namespace.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.client_ns, program])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// One kdig query from the client; returns the status word (e.g. "REFUSED") or the failure text.
    pub fn kdig(&self, args: &[&str]) -> String {
        let mut all = vec!["+retry=0", "+timeout=2"];
        all.extend_from_slice(args);
        let out = self.client("kdig", &all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match text.split("status: ").nth(1) {
            Some(rest) => rest
                .split([';', ' ', '\n'])
                .next()
                .unwrap_or("")
                .to_string(),
            None => format!(
                "no answer: {}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// A configuration for this lab; `extra` is appended verbatim.
    pub fn config(&self, instance: &str, extra: &str) -> String {
        self.config_full(instance, "", "", extra)
    }

    /// A configuration with extra lines in [xdp] and [xsk] too. Unless
    /// `extra` has an `[acl]` of its own, the lab's documentation prefixes
    /// (which the default ACL leaves out) are allowed: [`LAB_ACL`].
    pub fn config_full(
        &self,
        instance: &str,
        xdp_extra: &str,
        xsk_extra: &str,
        extra: &str,
    ) -> String {
        format!(
            r#"instance = "{instance}"
runtime_dir = "{run}"
[xdp]
interface = "{SERVER_IF}"
pin_root = "{pins}"
{xdp_extra}
[xsk]
frames = 512
{xsk_extra}
[dataplane]
user = "{DATAPLANE_USER}"
stats_interval_ms = 200
[[listen]]
address = "{SERVER_V4}:53"
[[listen]]
address = "[{SERVER_V6}]:53"
{extra}
{acl}"#,
            run = self.runtime_dir.display(),
            pins = self.pin_root.display(),
            acl = if extra.contains("[acl]") { "" } else { LAB_ACL },
        )
    }

    pub fn write_config(&self, instance: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{instance}.toml"));
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Runs an `xdpdns` subcommand inside the server namespace.
    pub fn xdpdns(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.server_ns))
            .args(self.users.prefix())
            .arg(bin("xdpdns"))
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("nsenter xdpdns")
    }

    /// Starts `xdpdns run` in the server namespace and waits for READY=1.
    pub fn start(&self, instance: &str, config: &str) -> anyhow::Result<Server> {
        self.start_with(instance, config, &[])
    }

    /// Like [`Lab::start`], with `wrap` (a command prefix, e.g. one that joins
    /// a cgroup and execs the rest) between nsenter and xdpdns.
    pub fn start_with(
        &self,
        instance: &str,
        config: &str,
        wrap: &[String],
    ) -> anyhow::Result<Server> {
        let path = self.write_config(instance, config)?;
        let notify_path = self.dir.join(format!("{instance}.notify"));
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_millis(200)))?;
        let log_path = self.dir.join(format!("{instance}.log"));
        let log = fs::File::create(&log_path)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.server_ns))
            .args(wrap)
            .args(self.users.prefix())
            .arg(bin("xdpdns"))
            .args(["run", "--config"])
            .arg(&path)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut server = Server {
            child: Some(child),
            config: path,
            log: log_path,
        };
        let end = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                return Ok(server);
            }
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "xdpdns exited before READY ({status}):\n{}",
                    server.log_text()
                );
            }
            if Instant::now() > end {
                bail!("xdpdns not READY within 20 s:\n{}", server.log_text());
            }
        }
    }

    /// Opens a socket inside the client or server namespace.
    pub fn in_ns<T: Send>(
        &self,
        server: bool,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let ns = if server {
            &self.server_ns
        } else {
            &self.client_ns
        };
        let file = fs::File::open(format!("/run/netns/{ns}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// A `/proc/net/snmp` counter in the client namespace, e.g. ("Udp", "InCsumErrors").
    pub fn client_snmp(&self, table: &str, field: &str) -> u64 {
        let out = self.client("cat", &["/proc/net/snmp"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{table}:")))
            .collect();
        let (Some(head), Some(vals)) = (rows.first(), rows.get(1)) else {
            return 0;
        };
        head.split_whitespace()
            .zip(vals.split_whitespace())
            .find(|(h, _)| *h == field)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }

    /// Whether `ifname` in the server namespace has an XDP program attached.
    pub fn server_has_xdp(&self, ifname: &str) -> bool {
        self.server_xdp_prog_id(ifname).is_some()
    }

    /// The id of the XDP program on `ifname`, if any.
    pub fn server_xdp_prog_id(&self, ifname: &str) -> Option<u32> {
        let out = Command::new("ip")
            .args(["-d", "-n", &self.server_ns, "link", "show", ifname])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let at = text.find("prog/xdp id ")?;
        text[at + 12..].split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Namespaces first: that detaches every XDP program in them.
        for ns in [
            &self.server_ns,
            &self.client_ns,
            &self.switch_ns(),
            &self.legit_ns(),
        ] {
            if !Path::new("/run/netns").join(ns).exists() {
                continue;
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if let Ok(entries) = fs::read_dir(&self.pin_root) {
            for instance in entries.flatten() {
                if let Ok(pins) = fs::read_dir(instance.path()) {
                    for p in pins.flatten() {
                        let _ = fs::remove_file(p.path());
                    }
                }
                let _ = fs::remove_dir(instance.path());
            }
        }
        let _ = fs::remove_dir(&self.pin_root);
        // Unmounted before the directory that holds it goes.
        drop(self.bpffs.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running `xdpdns run`; SIGKILLed (with its dataplanes) on drop if still running.
pub struct Server {
    child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Server {
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `nsenter`'s pid is the loader's: nsenter execs it.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `xdpdns status --json`.
    pub fn status(&self) -> anyhow::Result<Value> {
        let out = Command::new(bin("xdpdns"))
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .output()?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until `pred` holds on the status JSON.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        wait_status_of(what, || self.status(), pred, String::new)
    }

    /// Dataplane pids from the status.
    pub fn dataplane_pids(&self) -> anyhow::Result<Vec<u32>> {
        let s = self.status()?;
        Ok(s["queues"]
            .as_array()
            .context("queues")?
            .iter()
            .filter_map(|q| q["pid"].as_u64().map(|p| p as u32))
            .collect())
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().context("already stopped")?;
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > end {
                let _ = child.kill();
                bail!(
                    "xdpdns did not exit within 15 s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the loader (its dataplanes die by parent-death signal).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A field of /proc/PID/status, e.g. "CapEff".
pub fn proc_status(pid: u32, field: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// MAC address of an interface in a namespace.
pub fn mac_of(ns: &str, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let out = ip(&["-n", ns, "-j", "link", "show", ifname])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    frames::mac(v[0]["address"].as_str().context("no address")?)
}

/// Interface index of an interface in a namespace.
pub fn ifindex_of(ns: &str, ifname: &str) -> anyhow::Result<u32> {
    let out = ip(&["-n", ns, "-j", "link", "show", ifname])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v[0]["ifindex"].as_u64().context("no ifindex")? as u32)
}

/// Sum of a counter over all queues of a status, e.g. ("xsk", "answered").
pub fn total(status: &Value, path: &str, field: &str) -> u64 {
    status["totals"][path][field].as_u64().unwrap_or(0)
}

/// A drop counter by reason over all queues of a status.
pub fn dropped(status: &Value, path: &str, reason: &str) -> u64 {
    status["totals"][path]["dropped"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// An XDP program outcome counter of a status.
pub fn xdp(status: &Value, outcome: &str) -> u64 {
    status["xdp"][outcome].as_u64().unwrap_or(0)
}

impl Lab {
    /// A counter from the client's `/proc/net/snmp6`, e.g. "Udp6InCsumErrors".
    pub fn client_snmp6(&self, field: &str) -> u64 {
        let out = self.client("cat", &["/proc/net/snmp6"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(field)).then(|| it.next().and_then(|v| v.parse().ok()))?
            })
            .unwrap_or(0)
    }

    /// Makes the client send everything on its tx queue `queue` (XPS), so it
    /// lands on the server's rx queue of the same number.
    pub fn steer_client_to_queue(&self, queue: u32) -> anyhow::Result<()> {
        self.steer(&self.client_ns, CLIENT_IF, queue)
    }

    /// Makes the server's kernel stack send on tx queue `queue`: kxdpgun only
    /// listens on the client's queue 0, so kernel-path answers must land there.
    pub fn steer_server_to_queue(&self, queue: u32) -> anyhow::Result<()> {
        self.steer(&self.server_ns, SERVER_IF, queue)
    }

    fn steer(&self, ns: &str, ifname: &str, queue: u32) -> anyhow::Result<()> {
        // SAFETY: sysconf has no memory arguments.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.clamp(1, 63) as u32;
        let all = format!("{:x}", (1u64 << cpus) - 1);
        for q in 0..2 {
            let mask = if q == queue { all.as_str() } else { "0" };
            sh(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                &format!("echo {mask} > /sys/class/net/{ifname}/queues/tx-{q}/xps_cpus"),
            ]))?;
        }
        Ok(())
    }
}

/// Result of a `kxdpgun` run: queries sent and answers received.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub sent: u64,
    pub received: u64,
}

impl Lab {
    /// Writes `n` random query names for kxdpgun and returns the file.
    pub fn query_file(&self, n: usize) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("queries.txt");
        let mut seed = 0x1234_5678u64;
        let mut text = String::new();
        for _ in 0..n {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(&format!("q{:x}.example.com A\n", seed >> 24));
        }
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts `kxdpgun` from the client at `qps` for `secs` seconds.
    pub fn kxdpgun(&self, qps: u64, secs: u64, target: &str) -> anyhow::Result<Child> {
        let file = self.query_file(10_000)?;
        Ok(Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client_ns,
                "kxdpgun",
                "-t",
                &secs.to_string(),
            ])
            .args(["-Q", &qps.to_string(), "-I", CLIENT_IF, "-i"])
            .arg(&file)
            .arg(target)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// Waits for kxdpgun and parses its totals.
    pub fn kxdpgun_result(child: Child) -> anyhow::Result<Load> {
        Ok(Lab::kxdpgun_text(child.wait_with_output()?)?.0)
    }

    /// kxdpgun from the client's address `from` at `qps` for `secs` with
    /// the queries of `file`, to completion: its counts and its output.
    pub fn kxdpgun_from(
        &self,
        from: &str,
        qps: u64,
        secs: u64,
        file: &Path,
    ) -> anyhow::Result<(Load, String)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client_ns, "kxdpgun"])
            .args(["-t", &secs.to_string(), "-Q", &qps.to_string()])
            .args(["-I", CLIENT_IF, "-l", from, "-i"])
            .arg(file)
            .arg(SERVER_V4)
            .output()?;
        Lab::kxdpgun_text(out)
    }

    fn kxdpgun_text(out: Output) -> anyhow::Result<(Load, String)> {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let grab = |key: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("no {key:?} in kxdpgun output:\n{text}"))
        };
        let load = Load {
            sent: grab("total queries:")?,
            received: grab("total replies:")?,
        };
        Ok((load, text))
    }
}

impl Server {
    /// A queue's field from the status.
    pub fn queue(&self, queue: u32) -> anyhow::Result<Value> {
        let s = self.status()?;
        s["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["queue"] == queue).cloned())
            .with_context(|| format!("queue {queue} not in status: {s:#}"))
    }

    /// [`Server::cli`]: whether it succeeded, and all it printed.
    pub fn said(&self, args: &[&str]) -> (bool, String) {
        let out = self.cli(args);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Runs an `xdpdns` subcommand against this server's configuration.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("xdpdns"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .output()
            .expect("xdpdns")
    }
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A knotd serving a small test zone, killed on drop.
pub struct Knot {
    child: Child,
    pub dir: PathBuf,
}

impl Knot {
    /// Makes knotd reload its configuration and changed zones (SIGHUP).
    pub fn reload(&self) -> anyhow::Result<()> {
        sh(Command::new("kill").args(["-HUP", &self.child.id().to_string()]))?;
        Ok(())
    }

    /// Gives every thread of knotd the scheduling niceness `nice`.
    pub fn renice(&self, nice: i32) -> anyhow::Result<()> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id()))?;
        let mut cmd = Command::new("renice");
        cmd.args(["-n", &nice.to_string(), "-p"]);
        for t in tasks {
            cmd.arg(t?.file_name());
        }
        sh(&mut cmd)?;
        Ok(())
    }

    /// Stops knotd now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Name, type and data of the test zone's records that tests look for.
pub const ZONE_A: &str = "198.51.100.7";
pub const ZONE_AAAA: &str = "2001:db8::7";

impl Lab {
    /// kdig's whole output for one query.
    pub fn kdig_output(&self, args: &[&str]) -> String {
        let mut all = vec!["+retry=0", "+timeout=2"];
        all.extend_from_slice(args);
        let out = self.client("kdig", &all);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Adds an address to an interface in the client namespace.
    pub fn client_addr(&self, cidr: &str, ifname: &str) -> anyhow::Result<()> {
        ns_addr(&self.client_ns, cidr, ifname)
    }

    /// Adds an address to an interface in the server namespace.
    pub fn server_addr(&self, cidr: &str, ifname: &str) -> anyhow::Result<()> {
        ns_addr(&self.server_ns, cidr, ifname)
    }

    /// Starts knotd in namespace `ns` serving `example.test.` on `listen`
    /// (e.g. ["192.0.2.10@53"]), with a TXT record of `big_txt` bytes.
    pub fn knot(
        &self,
        ns: &str,
        tag: &str,
        listen: &[&str],
        big_txt: usize,
    ) -> anyhow::Result<Knot> {
        let mut extra = String::new();
        if big_txt > 0 {
            extra.push_str("big TXT");
            let chunk = "x".repeat(250);
            for _ in 0..big_txt.div_ceil(251) {
                extra.push_str(&format!(" \"{chunk}\""));
            }
            extra.push('\n');
        }
        self.knot_zone(ns, tag, listen, &extra)
    }

    /// Like [`Lab::knot`], with `extra` zone lines (relative to
    /// `example.test.`) appended.
    pub fn knot_zone(
        &self,
        ns: &str,
        tag: &str,
        listen: &[&str],
        extra: &str,
    ) -> anyhow::Result<Knot> {
        self.knot_zones(ns, tag, listen, extra, "")
    }

    /// The zone file of [`Lab::knot_zone`] with `extra` records and SOA
    /// serial `serial`.
    pub fn zone_text(extra: &str, serial: u32) -> String {
        format!(
            "$ORIGIN example.test.\n$TTL 300\n@ SOA ns hostmaster {serial} 3600 600 86400 300\n@ NS ns\nns A 192.0.2.10\n\
             www A {ZONE_A}\nwww AAAA {ZONE_AAAA}\n*.cached A 192.0.2.55\n{extra}"
        )
    }

    /// Like [`Lab::knot_zone`], with `zones` appended to knotd's zone list
    /// (e.g. a zone whose file is missing: knotd answers SERVFAIL for it).
    pub fn knot_zones(
        &self,
        ns: &str,
        tag: &str,
        listen: &[&str],
        extra: &str,
        zones: &str,
    ) -> anyhow::Result<Knot> {
        let dir = self.dir.join(format!("knot-{tag}"));
        fs::create_dir_all(dir.join("db"))?;
        fs::write(dir.join("example.test.zone"), Lab::zone_text(extra, 1))?;
        let listen: Vec<String> = listen.iter().map(|l| format!("\"{l}\"")).collect();
        let conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: [{l}]\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n    udp-max-payload: 4096\n\
             log:\n  - target: stderr\n    any: warning\n\
             database:\n    storage: \"{d}/db\"\n\
             zone:\n  - domain: example.test\n    storage: \"{d}\"\n    file: example.test.zone\n{zones}",
            d = dir.display(),
            l = listen.join(", ")
        );
        fs::write(dir.join("knot.conf"), conf)?;
        let log = fs::File::create(dir.join("knot.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "knotd", "-c"])
            .arg(dir.join("knot.conf"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let knot = Knot { child, dir };
        let first = listen[0]
            .trim_matches('"')
            .split('@')
            .next()
            .unwrap_or("")
            .to_string();
        wait_for(Duration::from_secs(10), "knotd to answer", || {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "kdig",
                    "+retry=0",
                    "+timeout=1",
                    &format!("@{first}"),
                    "www.example.test",
                    "A",
                ])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains("NOERROR")
                .then_some(())
        })?;
        Ok(knot)
    }
}

/// Adds an address to an interface in namespace `ns` (IPv6 without DAD).
pub fn ns_addr(ns: &str, cidr: &str, ifname: &str) -> anyhow::Result<()> {
    let mut args = vec!["-n", ns, "addr", "add", cidr, "dev", ifname];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ip(&args)?;
    Ok(())
}

/// A network namespace deleted on drop.
pub struct NsGuard(String);

impl NsGuard {
    pub fn new(name: &str) -> anyhow::Result<NsGuard> {
        ip(&["netns", "add", name])?;
        Ok(NsGuard(name.into()))
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

impl Lab {
    /// Runs a command in the client namespace on one CPU; its output.
    pub fn client_pinned(&self, cpu: u32, cmd: &[&str]) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client_ns,
                "taskset",
                "-c",
                &cpu.to_string(),
            ])
            .args(cmd)
            .output()
            .expect("taskset");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Like [`Lab::knot`], with knotd's threads on one CPU.
    pub fn knot_pinned(
        &self,
        ns: &str,
        tag: &str,
        listen: &[&str],
        cpu: u32,
    ) -> anyhow::Result<Knot> {
        let k = self.knot(ns, tag, listen, 0)?;
        sh(Command::new("taskset").args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &k.child.id().to_string(),
        ]))?;
        Ok(k)
    }
}

/// One query as a [`RecordingBackend`] saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub from: std::net::SocketAddr,
    pub id: u16,
    /// The question name in wire form (labels), lower-cased.
    pub qname: Vec<u8>,
}

/// A tiny DNS server in the client namespace that answers every query
/// NOERROR (its question echoed, no records) and records who asked: the
/// source port and ID of each forwarded query.
pub struct RecordingBackend {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Vec<Seen>>>>,
}

/// How a [`RecordingBackend`] treats queries whose name has a label: answer
/// after a delay, or never.
pub type Hold = (&'static str, Option<Duration>);

impl RecordingBackend {
    pub fn start(lab: &Lab, addr: &str) -> anyhow::Result<RecordingBackend> {
        Self::start_holding(lab, addr, &[])
    }

    /// Like [`RecordingBackend::start`]; queries with a label of `holds`
    /// are answered late or not at all.
    pub fn start_holding(
        lab: &Lab,
        addr: &str,
        holds: &[Hold],
    ) -> anyhow::Result<RecordingBackend> {
        let holds: Vec<(Vec<u8>, Option<Duration>)> = holds
            .iter()
            .map(|(label, d)| {
                let mut l = vec![label.len() as u8];
                l.extend_from_slice(label.as_bytes());
                (l, *d)
            })
            .collect();
        let addr: std::net::SocketAddr = addr.parse()?;
        let sock = lab.in_ns(false, || Ok(std::net::UdpSocket::bind(addr)?))?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<Vec<Seen>> {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let mut later: Vec<(Instant, Vec<u8>, std::net::SocketAddr)> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                later.retain(|(due, reply, to)| {
                    if *due > now {
                        return true;
                    }
                    let _ = sock.send_to(reply, to);
                    false
                });
                let (n, from) = match sock.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let q = &buf[..n];
                let Some(end) = question_end(q) else {
                    continue;
                };
                seen.push(Seen {
                    from,
                    id: u16::from_be_bytes([q[0], q[1]]),
                    qname: q[12..end - 4].to_ascii_lowercase(),
                });
                let mut reply = q[..end].to_vec();
                reply[2] |= 0x80; // QR
                reply[3] = 0x80; // RA, NOERROR
                reply[6..12].fill(0); // no records (the query's OPT dropped)
                let name = &q[12..end - 4];
                match holds
                    .iter()
                    .find(|(l, _)| name.windows(l.len()).any(|w| w.eq_ignore_ascii_case(l)))
                {
                    None => {
                        let _ = sock.send_to(&reply, from);
                    }
                    Some((_, Some(d))) => later.push((Instant::now() + *d, reply, from)),
                    Some((_, None)) => {}
                }
            }
            Ok(seen)
        });
        Ok(RecordingBackend {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops answering and returns what was seen, in arrival order.
    pub fn finish(mut self) -> anyhow::Result<Vec<Seen>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| anyhow::anyhow!("the recording backend panicked"))?
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The end of the (single, uncompressed) question of a DNS message.
fn question_end(m: &[u8]) -> Option<usize> {
    if m.len() < 12 || m[4..6] != [0, 1] {
        return None;
    }
    let mut at = 12;
    loop {
        let l = usize::from(*m.get(at)?);
        if l == 0 {
            at += 1;
            break;
        }
        if l > 63 {
            return None;
        }
        at += 1 + l;
    }
    (at + 4 <= m.len()).then_some(at + 4)
}

/// How forwarded queries' source ports and IDs are spread.
#[derive(Debug)]
pub struct Spread {
    pub queries: usize,
    pub distinct_ports: usize,
    /// Pairs of successive queries on one port.
    pub pairs: usize,
    /// Of those, the pairs whose IDs differ by 1..=8 (what a counter does).
    pub counter_like: usize,
}

impl Spread {
    pub fn of(seen: &[Seen]) -> Spread {
        let mut last: std::collections::HashMap<u16, u16> = Default::default();
        let (mut pairs, mut counter_like) = (0, 0);
        for s in seen {
            if let Some(prev) = last.insert(s.from.port(), s.id) {
                pairs += 1;
                if (1..=8).contains(&s.id.wrapping_sub(prev)) {
                    counter_like += 1;
                }
            }
        }
        Spread {
            queries: seen.len(),
            distinct_ports: last.len(),
            pairs,
            counter_like,
        }
    }

    /// Successive IDs on one port look like a counter in under 1 % of pairs.
    pub fn ids_look_random(&self) -> bool {
        self.pairs > 0 && self.counter_like * 100 < self.pairs
    }
}

impl Lab {
    /// `GET path` from an HTTP server in the server namespace; the body.
    pub fn http_get(&self, addr: &str, path: &str) -> anyhow::Result<String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let addr = addr.to_string();
        let text = self.in_ns(true, move || {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(addr.as_str())?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(request.as_bytes())?;
            let mut t = String::new();
            c.read_to_string(&mut t)?;
            Ok(t)
        })?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("not an HTTP response: {text:?}"))?;
        anyhow::ensure!(head.contains(" 200 "), "{head}");
        Ok(body.to_string())
    }
}

impl Lab {
    /// Fetches /metrics from the server namespace until `pred` holds on
    /// the text (the exporter serves a snapshot at most a second old).
    pub fn metrics_until(
        &self,
        addr: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.http_get(addr, "/metrics");
            if let Ok(t) = &text
                && pred(t)
            {
                return text;
            }
            if Instant::now() > end {
                bail!("timed out waiting for metrics: {what}; last: {text:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The value of one Prometheus series (`name{labels}` exactly as exposed).
pub fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Unmounts a private bpffs on drop.
pub struct Bpffs(pub PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// A loader run as the packaged unit runs it: as the loader's own user
/// with the unit's ambient capabilities (no root), over a private bpffs
/// and runtime directory that user owns, from binaries it can reach.
pub struct UnitLoader {
    pub child: Child,
    pub config: PathBuf,
    pub bins: PathBuf,
    pub pin_root: PathBuf,
    pub log: PathBuf,
    _bpffs: Bpffs,
}

/// The capabilities the packaged unit grants the loader.
pub const UNIT_CAPS: &str =
    "+sys_admin,+net_admin,+net_raw,+net_bind_service,+setuid,+setgid,+setpcap,+kill";

impl Lab {
    /// Starts the loader of `instance` with `extra` configuration as the
    /// packaged unit would (see [`UnitLoader`]) and waits until it is ready.
    pub fn start_as_unit(&self, instance: &str, extra: &str) -> anyhow::Result<UnitLoader> {
        self.start_as_unit_hooked(instance, extra, "")
    }

    /// Like [`Lab::start_as_unit`], with dataplanes told to misbehave as
    /// `hook` says (`XDPDNS_TEST_HOOK`; a test-hooks build).
    pub fn start_as_unit_hooked(
        &self,
        instance: &str,
        extra: &str,
        hook: &str,
    ) -> anyhow::Result<UnitLoader> {
        let loader_uid = self.users.loader_uid;
        let bpffs = Bpffs(self.dir.join("bpffs"));
        fs::create_dir_all(&bpffs.0)?;
        sh(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs.0))?;
        for d in [&bpffs.0, &self.runtime_dir] {
            fs::create_dir_all(d)?;
            nix::unistd::chown(d, Some(loader_uid.into()), Some(loader_uid.into()))?;
            fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        }
        let bins = self.dir.join("bin");
        fs::create_dir_all(&bins)?;
        for b in ["xdpdns", "xdpdns-dataplane", "xdpdns-tcp"] {
            fs::copy(bin(b), bins.join(b))?;
        }
        let pin_root = bpffs.0.join("xdpdns");
        let config = self
            .config(
                instance,
                &format!(
                    "{extra}\n[tcp]\nbinary = \"{}\"\n",
                    bins.join("xdpdns-tcp").display()
                ),
            )
            .replace(
                &format!("pin_root = \"{}\"", self.pin_root.display()),
                &format!("pin_root = \"{}\"", pin_root.display()),
            )
            .replace(
                &format!("user = \"{DATAPLANE_USER}\""),
                &format!(
                    "user = \"{DATAPLANE_USER}\"\nbinary = \"{}\"",
                    bins.join("xdpdns-dataplane").display()
                ),
            );
        let path = self.write_config(instance, &config)?;
        let log_path = self.dir.join(format!("{instance}.log"));
        let log = fs::File::create(&log_path)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.server_ns))
            .args(self.users.prefix())
            .args([
                "setpriv",
                &format!("--reuid={loader_uid}"),
                &format!("--regid={loader_uid}"),
                "--clear-groups",
            ])
            .arg(format!("--inh-caps={UNIT_CAPS}"))
            .arg(format!("--ambient-caps={UNIT_CAPS}"))
            .arg(bins.join("xdpdns"))
            .args(["run", "--config"])
            .arg(&path)
            .env("NO_COLOR", "1")
            .env("XDPDNS_TEST_HOOK", hook)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let loader = UnitLoader {
            child,
            config: path,
            bins,
            pin_root,
            log: log_path,
            _bpffs: bpffs,
        };
        // Dataplanes told to misbehave may never all be registered at once.
        wait_for(
            Duration::from_secs(15),
            "READY as the loader's user",
            || {
                loader
                    .status()
                    .ok()
                    .filter(|s| !hook.is_empty() || s["ready"] == true)
            },
        )
        .with_context(|| loader.log_text())?;
        Ok(loader)
    }
}

impl UnitLoader {
    /// The status of one queue.
    pub fn queue(&self, queue: u32) -> anyhow::Result<Value> {
        let s = self.status()?;
        s["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["queue"] == queue).cloned())
            .with_context(|| format!("queue {queue} not in status: {s:#}"))
    }

    /// Whether the loader still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn status(&self) -> anyhow::Result<Value> {
        let out = Command::new(self.bins.join("xdpdns"))
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        wait_status_of(what, || self.status(), pred, || self.log_text())
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(self.bins.join("xdpdns"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("xdpdns")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status (bounded).
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        wait_for(Duration::from_secs(15), "the loader's exit", || {
            self.child.try_wait().ok().flatten()
        })
        .with_context(|| self.log_text())
    }
}

impl Drop for UnitLoader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
