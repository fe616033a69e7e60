//! Start, stop, restart and coexistence of instances.

use std::path::Path;
use std::time::Duration;

use xdpdns_netns_tests::*;

fn pins(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
#[ignore = "needs root: run by make test"]
fn sigterm_detaches_unpins_and_leaves_no_process() -> anyhow::Result<()> {
    let lab = Lab::new("sigterm")?;
    let mut server = lab.start("t", &lab.config("t", ""))?;
    let pin_dir = lab.pin_root.join("t");
    assert_eq!(
        pins(&pin_dir),
        [
            "acl_fast",
            "acl_v4_0",
            "acl_v4_1",
            "acl_v6_0",
            "acl_v6_1",
            "backends_v4",
            "backends_v6",
            "block_hits",
            "dest_v4",
            "dest_v6",
            "limits",
            "link",
            "listen_stats",
            "meta",
            "policy_v4_0",
            "policy_v4_1",
            "policy_v6_0",
            "policy_v6_1",
            "prog",
            "rate_v4",
            "rate_v6",
            "settings",
            "stats",
            "xsks"
        ]
    );
    assert!(lab.server_has_xdp(SERVER_IF));
    let pids = server.dataplane_pids()?;
    let loader = server.pid();
    assert!(server.stop()?.success(), "{}", server.log_text());
    assert!(!lab.server_has_xdp(SERVER_IF), "program detached");
    assert!(!pin_dir.exists(), "pins removed");
    assert!(
        !lab.runtime_dir.join("t").exists(),
        "runtime directory removed"
    );
    for pid in pids.iter().chain([&loader]) {
        assert!(!alive(*pid), "process {pid} left behind");
    }
    let log = server.log_text();
    assert!(
        log.contains("queue summary"),
        "summary logged on exit:\n{log}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn second_instances_leave_the_first_alone() -> anyhow::Result<()> {
    let lab = Lab::new("twoinst")?;
    lab.add_second_pair()?;
    let first = lab.start("one", &lab.config("one", ""))?;
    let first_pins = lab.pin_root.join("one");
    let before = pins(&first_pins);
    let prog = lab.server_xdp_prog_id(SERVER_IF);

    // `check` of another instance on the same interface touches nothing.
    let path = lab.write_config("two", &lab.config("two", ""))?;
    let out = lab.xdpdns(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("already has an XDP program"));

    // Running a second instance on the same interface is refused.
    let out = lab.xdpdns(&["run", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not own"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running the same instance twice is refused.
    let out = lab.xdpdns(&["run", "--config", first.config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));

    // A second instance on another interface runs beside the first.
    let second_cfg = lab
        .config("two", "")
        .replace(
            &format!("interface = \"{SERVER_IF}\""),
            "interface = \"srv1\"",
        )
        .replace(&format!("{SERVER_V4}:53"), "192.0.2.129:53")
        .replace(&format!("[{SERVER_V6}]:53"), "192.0.2.129:5300");
    let mut second = lab.start("two", &second_cfg)?;
    assert_eq!(lab.kdig(&["@192.0.2.129", "two.example"]), "REFUSED");
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "one.example"]),
        "REFUSED"
    );
    assert!(second.stop()?.success());

    assert_eq!(pins(&first_pins), before, "first instance's pins intact");
    assert_eq!(
        lab.server_xdp_prog_id(SERVER_IF),
        prog,
        "first instance's program intact"
    );
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "still.example"]),
        "REFUSED"
    );
    let s = first.status()?;
    assert_eq!(
        s["listen"].as_array().unwrap().len(),
        2,
        "destination maps intact"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn restarted_loader_adopts_its_pinned_program() -> anyhow::Result<()> {
    let lab = Lab::new("adopt")?;
    let config = lab.config("a", "");
    let mut server = lab.start("a", &config)?;
    let prog = lab.server_xdp_prog_id(SERVER_IF).expect("program attached");
    let pids = server.dataplane_pids()?;
    server.kill()?;
    // Parent-death signal: no dataplane outlives its loader.
    wait_for(
        Duration::from_secs(5),
        "dataplanes to die with the loader",
        || pids.iter().all(|p| !alive(*p)).then_some(()),
    )?;
    assert_eq!(
        lab.server_xdp_prog_id(SERVER_IF),
        Some(prog),
        "the pinned link keeps the program attached"
    );

    let server = lab.start("a", &config)?;
    assert_eq!(
        lab.server_xdp_prog_id(SERVER_IF),
        Some(prog),
        "adopted, not reattached"
    );
    assert!(
        server.log_text().contains("Adopted"),
        "{}",
        server.log_text()
    );
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "again.example"]),
        "REFUSED"
    );

    // A different build or configuration replaces it atomically through the link.
    drop(server); // SIGKILL: the pins stay
    let changed = lab.config_full("a", "", "frame_size = 4096", "");
    let server = lab.start("a", &changed)?;
    assert!(
        server.log_text().contains("Replaced"),
        "{}",
        server.log_text()
    );
    assert!(lab.server_has_xdp(SERVER_IF));
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "replaced.example"]),
        "REFUSED"
    );
    Ok(())
}
