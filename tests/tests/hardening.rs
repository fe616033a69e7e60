//! The sandbox around dataplanes: seccomp, and pins they cannot open.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use xdpdns_netns_tests::*;

#[test]
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
        load.sent > 30_000 && load.received * 100 >= load.sent * 99,
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
fn the_dataplane_user_cannot_open_pinned_maps() -> anyhow::Result<()> {
    let lab = Lab::new("pins")?;
    let _server = lab.start("p", &lab.config("p", ""))?;
    let helper = bin("bpf-obj-get");
    for pin in ["xsks", "dest_v4", "stats", "prog", "link"] {
        let path = lab.pin_root.join("p").join(pin);
        let as_root = Command::new(&helper).arg(&path).output()?;
        assert!(as_root.status.success(), "root opens {pin}: {as_root:?}");
        // The dataplanes' uid and gid, without any capability.
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
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
