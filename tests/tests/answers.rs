//! Queries answered over AF_XDP, by dataplanes with CAP_NET_RAW only.

use std::time::Duration;
use xdpdns_netns_tests::*;

#[test]
#[ignore = "needs root: run by make test"]
fn kdig_gets_refused_over_af_xdp_on_ipv4_and_ipv6() -> anyhow::Result<()> {
    let lab = Lab::new("answers")?;
    let mut server = lab.start("a", &lab.config("a", ""))?;
    let csum4 = lab.client_snmp("Udp", "InCsumErrors");
    let csum6 = lab.client_snmp6("Udp6InCsumErrors");
    let v4 = format!("@{SERVER_V4}");
    let v6 = format!("@{SERVER_V6}");
    for i in 0..10 {
        let name = format!("q{i}.example.com");
        assert_eq!(lab.kdig(&[&v4, &name, "A"]), "REFUSED", "IPv4 query {i}");
        assert_eq!(
            lab.kdig(&[&v6, &name, "AAAA", "+edns"]),
            "REFUSED",
            "IPv6 query {i}"
        );
    }
    // The client's kernel verified every answer's checksum (a bad one is
    // dropped and counted in InCsumErrors before kdig could see it).
    assert_eq!(lab.client_snmp("Udp", "InCsumErrors"), csum4);
    assert_eq!(lab.client_snmp6("Udp6InCsumErrors"), csum6);

    let s = server.wait_status("20 answers over AF_XDP", |s| {
        total(s, "xsk", "answered") >= 20
    })?;
    assert_eq!(
        total(&s, "kernel", "received"),
        0,
        "nothing took the kernel path: {s:#}"
    );
    assert!(xdp(&s, "redirect") >= 20, "{s:#}");
    // kdig's kernel left partial checksums (the veth's TX offload is on):
    // recognised, not sent to the kernel.
    assert!(xdp(&s, "partial_csum") >= 20, "{s:#}");
    assert_eq!(xdp(&s, "bad_csum"), 0, "{s:#}");
    assert_eq!(xdp(&s, "no_socket"), 0);
    assert_eq!(s["ready"], true);

    // With the offload off, frames carry full checksums, as from a wire;
    // names of 5 lengths (UDP 39 to 59 bytes) take every step of the
    // program's summing (32, 16, 8, 4, 2 and 1 bytes at a time).
    lab.offload_off(CLIENT_IF)?;
    let partial = xdp(&s, "partial_csum");
    for i in 0..5 {
        let name = format!("full{}.example", "x".repeat(5 * i));
        assert_eq!(lab.kdig(&[&v4, &name, "A"]), "REFUSED", "{name}");
        assert_eq!(lab.kdig(&[&v6, &name, "A"]), "REFUSED", "{name}");
    }
    let s = server.wait_status("30 answers over AF_XDP", |s| {
        total(s, "xsk", "answered") >= 30
    })?;
    assert_eq!(xdp(&s, "partial_csum"), partial, "full checksums: {s:#}");
    assert_eq!(total(&s, "kernel", "received"), 0, "{s:#}");
    assert!(server.stop()?.success());
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn rules_answer_before_the_default() -> anyhow::Result<()> {
    let lab = Lab::new("rules")?;
    let rules = r#"
[[rule]]
qname_suffix = "blocked.test."
action = "nxdomain"
[[rule]]
qtype = "TXT"
action = "noerror"
"#;
    let _server = lab.start("r", &lab.config("r", rules))?;
    let v4 = format!("@{SERVER_V4}");
    assert_eq!(lab.kdig(&[&v4, "www.Blocked.TEST", "A"]), "NXDOMAIN");
    assert_eq!(lab.kdig(&[&v4, "example.com", "TXT"]), "NOERROR");
    assert_eq!(lab.kdig(&[&v4, "example.com", "A"]), "REFUSED");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn dataplanes_run_unprivileged_with_cap_net_raw_only() -> anyhow::Result<()> {
    let lab = Lab::new("privs")?;
    let server = lab.start("p", &lab.config("p", ""))?;
    let pids = server.dataplane_pids()?;
    assert_eq!(pids.len(), 2, "one dataplane per queue");
    for pid in pids {
        let uids = proc_status(pid, "Uid").expect("Uid");
        assert!(
            uids.split_whitespace().all(|u| u != "0"),
            "pid {pid} uids {uids}"
        );
        let gids = proc_status(pid, "Gid").expect("Gid");
        assert!(
            gids.split_whitespace().all(|g| g != "0"),
            "pid {pid} gids {gids}"
        );
        const NET_RAW: &str = "0000000000002000";
        const NONE: &str = "0000000000000000";
        // CAP_NET_RAW is used to create the AF_XDP socket, then dropped
        // (right after the socket is handed over: wait a moment for it).
        wait_for(Duration::from_secs(5), "capabilities dropped", || {
            (proc_status(pid, "CapEff").as_deref() == Some(NONE)).then_some(())
        })?;
        assert_eq!(
            proc_status(pid, "CapPrm").as_deref(),
            Some(NONE),
            "pid {pid}"
        );
        assert_eq!(
            proc_status(pid, "CapBnd").as_deref(),
            Some(NET_RAW),
            "pid {pid}"
        );
        assert_eq!(
            proc_status(pid, "CapAmb").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(
            proc_status(pid, "CapInh").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(
            proc_status(pid, "NoNewPrivs").as_deref(),
            Some("1"),
            "pid {pid}"
        );
    }
    Ok(())
}
