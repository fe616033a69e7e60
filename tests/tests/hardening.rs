//! The sandbox around dataplanes: seccomp, and pins they cannot open.

use std::process::Command;

use anyhow::Context;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use xdpdns_netns_tests::*;

#[test]
#[ignore = "needs root: run by make test"]
fn dataplanes_run_under_seccomp_and_still_answer() -> anyhow::Result<()> {
    let lab = Lab::new("seccomp")?;
    let server = lab.start("s", &lab.config("s", ""))?;
    lab.steer_server_to_queue(0)?;
    for pid in server.dataplane_pids()? {
        assert_eq!(
            proc_status(pid, "Seccomp").as_deref(),
            Some("2"),
            "pid {pid} filtered"
        );
    }
    let load = Lab::kxdpgun_result(lab.kxdpgun(20_000, 2, SERVER_V4)?)?;
    assert!(
        load.sent > 30_000 && load.received * 100 >= load.sent * 97,
        "{load:?}"
    );
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V6}"), "v6.example"]),
        "REFUSED"
    );
    Ok(())
}

/// Needs a test-hooks build of the dataplane (`make test` makes one).
#[test]
#[ignore = "needs root: run by make test"]
fn a_forbidden_system_call_kills_the_dataplane_and_it_is_restarted() -> anyhow::Result<()> {
    let lab = Lab::new("sigsys")?;
    let server = lab.start("s", &lab.config("s", ""))?;
    let victim = server.queue(1)?["pid"].as_u64().unwrap() as i32;
    kill(Pid::from_raw(victim), Signal::SIGUSR2)?;
    let s = server.wait_status("queue 1 restarted", |s| {
        let q = &s["queues"][1];
        q["restarts"] == 1 && q["registered"] == true
    })?;
    let why = s["queues"][1]["last_exit"].as_str().unwrap_or("");
    assert_eq!(
        why, "killed by signal 31",
        "SIGSYS from seccomp (is this a test-hooks build?)"
    );
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "after.example"]),
        "REFUSED"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn the_dataplane_user_cannot_open_pinned_maps() -> anyhow::Result<()> {
    let lab = Lab::new("pins")?;
    let _server = lab.start("p", &lab.config("p", ""))?;
    let helper = bin("bpf-obj-get");
    for pin in ["xsks", "dest_v4", "stats", "prog", "link"] {
        let path = lab.pin_root.join("p").join(pin);
        let as_root = Command::new(&helper).arg(&path).output()?;
        assert!(as_root.status.success(), "root opens {pin}: {as_root:?}");
        // The dataplanes' uid and gid, without any capability.
        let id = lab.users.dataplane_uid;
        let out = Command::new("setpriv")
            .arg(format!("--reuid={id}"))
            .arg(format!("--regid={id}"))
            .args(["--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
            .arg(&helper)
            .arg(&path)
            .output()?;
        assert_eq!(
            out.status.code(),
            Some(libc::EACCES),
            "{pin}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// Unmounts a private bpffs on drop.
struct Bpffs(std::path::PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
#[ignore = "needs root: run by make test"]
fn the_loader_runs_as_a_dedicated_user_with_ambient_capabilities() -> anyhow::Result<()> {
    // The users the package creates, in the lab's own user database.
    let lab = Lab::new("asuser")?;
    let (loader_uid, dp_uid) = (lab.users.loader_uid, lab.users.dataplane_uid);

    // What tmpfiles.d and RuntimeDirectory= provide in production: a pin root
    // and a runtime directory the loader's user owns (here a private bpffs).
    let bpffs = Bpffs(lab.dir.join("bpffs"));
    std::fs::create_dir_all(&bpffs.0)?;
    sh(Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&bpffs.0))?;
    for d in [&bpffs.0, &lab.runtime_dir] {
        std::fs::create_dir_all(d)?;
        nix::unistd::chown(d, Some(loader_uid.into()), Some(loader_uid.into()))?;
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    // Binaries where the loader's user can reach them, wherever the repo is.
    let bins = lab.dir.join("bin");
    std::fs::create_dir_all(&bins)?;
    for b in ["xdpdns", "xdpdns-dataplane", "xdpdns-tcp"] {
        std::fs::copy(bin(b), bins.join(b))?;
    }
    let pin_root = bpffs.0.join("xdpdns");
    let config = lab
        .config(
            "u",
            &format!(
                "[tcp]\nbinary = \"{}\"\n",
                bins.join("xdpdns-tcp").display()
            ),
        )
        .replace(
            &format!("pin_root = \"{}\"", lab.pin_root.display()),
            &format!("pin_root = \"{}\"", pin_root.display()),
        )
        .replace(
            &format!("user = \"{DATAPLANE_USER}\""),
            &format!(
                "user = \"{DATAPLANE_USER}\"\nbinary = \"{}\"",
                bins.join("xdpdns-dataplane").display()
            ),
        );
    let path = lab.write_config("u", &config)?;
    let log = std::fs::File::create(lab.dir.join("u.log"))?;
    let caps = "+sys_admin,+net_admin,+net_raw,+net_bind_service,+setuid,+setgid,+setpcap";
    let mut loader = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.server_ns))
        .args(lab.users.prefix())
        .args([
            "setpriv",
            &format!("--reuid={loader_uid}"),
            &format!("--regid={loader_uid}"),
            "--clear-groups",
        ])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(bins.join("xdpdns"))
        .args(["run", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        let status = || -> Option<serde_json::Value> {
            let out = Command::new(bins.join("xdpdns"))
                .args(["status", "--json", "--config"])
                .arg(&path)
                .output()
                .ok()?;
            serde_json::from_slice(&out.stdout).ok()
        };
        let s = wait_for(
            std::time::Duration::from_secs(15),
            "READY as user xdpdns",
            || status().filter(|s| s["ready"] == true),
        )
        .with_context(|| std::fs::read_to_string(lab.dir.join("u.log")).unwrap_or_default())?;
        assert_eq!(
            proc_status(loader.id(), "Uid")
                .unwrap()
                .split_whitespace()
                .next(),
            Some(loader_uid.to_string().as_str())
        );
        for q in s["queues"].as_array().unwrap() {
            let pid = q["pid"].as_u64().unwrap() as u32;
            let uid = proc_status(pid, "Uid").unwrap();
            assert_eq!(
                uid.split_whitespace().next(),
                Some(dp_uid.to_string().as_str()),
                "dataplane runs as xdpdns-dp"
            );
            assert_eq!(
                proc_status(pid, "CapEff").as_deref(),
                Some("0000000000002000")
            );
        }
        assert_eq!(
            lab.kdig(&[&format!("@{SERVER_V4}"), "user.example"]),
            "REFUSED"
        );
        // Pins belong to the loader's user; the dataplanes' user cannot open them.
        let map = pin_root.join("u").join("xsks");
        let meta = std::fs::metadata(&map)?;
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), loader_uid);
        let out = Command::new("setpriv")
            .arg(format!("--reuid={dp_uid}"))
            .arg(format!("--regid={dp_uid}"))
            .args(["--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
            .arg(bin("bpf-obj-get"))
            .arg(&map)
            .output()?;
        assert_eq!(
            out.status.code(),
            Some(libc::EACCES),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(())
    })();
    let _ = kill(Pid::from_raw(loader.id() as i32), Signal::SIGTERM);
    let exit = loader.wait()?;
    result?;
    assert!(exit.success(), "clean exit as a non-root loader");
    assert!(!pin_root.join("u").exists(), "pins removed");
    Ok(())
}
