//! The sandbox around dataplanes: seccomp, and pins they cannot open.

use std::process::Command;

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

#[test]
#[ignore = "needs root: run by make test"]
fn the_loader_runs_as_a_dedicated_user_with_ambient_capabilities() -> anyhow::Result<()> {
    // The users the package creates, in the lab's own user database.
    let lab = Lab::new("asuser")?;
    let (loader_uid, dp_uid) = (lab.users.loader_uid, lab.users.dataplane_uid);
    let mut loader = lab.start_as_unit("u", "")?;
    let s = loader.status()?;
    assert_eq!(
        proc_status(loader.child.id(), "Uid")
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
        // CAP_NET_RAW served its purpose (the socket is bound) and is gone;
        // the bounding set keeps nothing else.
        assert_eq!(
            proc_status(pid, "CapEff").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(
            proc_status(pid, "CapPrm").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(
            proc_status(pid, "CapBnd").as_deref(),
            Some("0000000000002000")
        );
    }
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "user.example"]),
        "REFUSED"
    );
    // Pins belong to the loader's user; the dataplanes' user cannot open them.
    let map = loader.pin_root.join("u").join("xsks");
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
    let exit = loader.stop()?;
    assert!(exit.success(), "clean exit as a non-root loader");
    assert!(!loader.pin_root.join("u").exists(), "pins removed");
    Ok(())
}
