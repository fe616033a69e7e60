//! Rules in production shape (#14): two pools of real knotd backends chosen
//! by suffix and by source, spoofed answers, TC and the TCP retry, TTL
//! clamping, a 100 k-name blocklist, the dry run, hit counters across a
//! reload, and a synthesized NXDOMAIN a real resolver caches.

use std::time::Duration;

use xdpdns_netns_tests::*;

const POOL_A: &str = "192.0.2.10";
const POOL_B: &str = "192.0.2.11";
/// A second client address, routed to pool a by its source.
const VIP_CLIENT: &str = "192.0.2.77";

/// knotd for `pool`, answering `x.{a,b,tc}.example.test TXT` with its name.
fn pool_backend(lab: &Lab, pool: &str, addr: &str) -> anyhow::Result<Knot> {
    lab.client_addr(&format!("{addr}/24"), CLIENT_IF)?;
    let c = lab.client_ns.clone();
    let extra: String = ["a", "b", "tc"]
        .iter()
        .map(|s| format!("x.{s} TXT \"pool-{pool}\"\n"))
        .collect();
    lab.knot_zone(&c, pool, &[&format!("{addr}@53")], &extra)
}

fn rules(block_file: &std::path::Path, spoof_ttl: u32) -> String {
    format!(
        r#"
[[backend]]
address = "{POOL_A}:53"
pool = "a"
[backend.health]
qname = "www.example.test."
interval_ms = 200
[[backend]]
address = "{POOL_B}:53"
[backend.health]
qname = "www.example.test."
interval_ms = 200
[[pool]]
name = "a"
[forwarding]
max_ttl = 120
[[rule]]
qname_file = "{file}"
action = "nxdomain"
[[rule]]
qname_suffix = ["a.example.test.", "a.example."]
action = "forward"
pool = "a"
[[rule]]
source = ["{VIP_CLIENT}/32"]
action = "forward"
pool = "a"
[[rule]]
qname = ["spoof.test."]
action = "spoof"
answers = ["A 192.0.2.99", "AAAA 2001:db8::99"]
ttl = {spoof_ttl}
[[rule]]
qname_suffix = "tc.example.test."
action = "tc"
"#,
        file = block_file.display()
    )
}

/// The TXT data, TTLs and the transport of a kdig answer.
fn answer_lines(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.starts_with(';') && l.split_whitespace().nth(2) == Some("IN"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn rule_hits(s: &serde_json::Value) -> Vec<u64> {
    s["rules"]
        .as_array()
        .map(|r| r.iter().map(|x| x["hits"].as_u64().unwrap_or(0)).collect())
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: run by make test"]
fn rules_route_to_pools_spoof_truncate_clamp_and_block() -> anyhow::Result<()> {
    let lab = Lab::new("rules")?;
    let _a = pool_backend(&lab, "a", POOL_A)?;
    let _b = pool_backend(&lab, "b", POOL_B)?;
    lab.client_addr(&format!("{VIP_CLIENT}/24"), CLIENT_IF)?;
    // A 100 k-name blocklist: more than one control message holds.
    let block = lab.dir.join("block.txt");
    let mut names = String::from("# test blocklist\n");
    for i in 0..100_000 {
        names.push_str(&format!("host{i}.block.example\n"));
    }
    std::fs::write(&block, names)?;
    let server = lab.start("r", &lab.config("r", &rules(&block, 60)))?;
    server.wait_status("both backends up", |s| {
        s["backends"][0]["up"] == true && s["backends"][1]["up"] == true
    })?;
    let at = format!("@{SERVER_V4}");
    let txt = |args: &[&str]| {
        let mut all = vec![at.as_str()];
        all.extend_from_slice(args);
        lab.kdig_output(&all)
    };
    // Routing by suffix and by source.
    for (args, want) in [
        (&["x.a.example.test", "TXT"][..], "pool-a"),
        (&["x.b.example.test", "TXT"], "pool-b"),
        (&["-b", VIP_CLIENT, "x.b.example.test", "TXT"], "pool-a"),
        (&["+tcp", "x.a.example.test", "TXT"], "pool-a"),
        (&["+tcp", "x.b.example.test", "TXT"], "pool-b"),
    ] {
        let out = txt(args);
        assert!(
            out.contains("NOERROR") && out.contains(want),
            "{args:?}: want {want}\n{out}"
        );
    }
    // Spoofed answers, over UDP and TCP.
    for (qtype, data) in [("A", "192.0.2.99"), ("AAAA", "2001:db8::99")] {
        for tcp in [false, true] {
            let mut args = vec!["spoof.test", qtype];
            if tcp {
                args.insert(0, "+tcp");
            }
            let out = txt(&args);
            let lines = answer_lines(&out);
            assert!(
                lines.iter().any(|l| l[0] == "spoof.test."
                    && l[1] == "60"
                    && l[3] == qtype
                    && l[4] == data),
                "{qtype} tcp={tcp}:\n{out}"
            );
        }
    }
    // TC over UDP; kdig's retry over TCP goes through the TCP worker to
    // the default pool.
    let out = txt(&["+ignore", "x.tc.example.test", "TXT"]);
    assert!(
        out.contains(" tc") && out.contains("(UDP)") && !out.contains("pool-"),
        "{out}"
    );
    let out = txt(&["x.tc.example.test", "TXT"]);
    assert!(
        out.contains("(TCP)") && out.contains("pool-b"),
        "TCP retry:\n{out}"
    );
    // TTLs clamped to max_ttl (the zone's are 300), both transports.
    for tcp in [false, true] {
        let mut args = vec!["www.example.test", "A"];
        if tcp {
            args.insert(0, "+tcp");
        }
        let out = txt(&args);
        let lines = answer_lines(&out);
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l[1] == "120"),
            "tcp={tcp}:\n{out}"
        );
    }
    // The blocklist, its last name too, and what is not on it.
    for name in ["host0.block.example", "x.host99999.block.example"] {
        assert_eq!(lab.kdig(&[&at, name, "A"]), "NXDOMAIN", "{name}");
    }
    assert_eq!(
        lab.kdig(&[&at, "+tcp", "host5.block.example", "A"]),
        "NXDOMAIN"
    );
    // The dry run on the running configuration agrees.
    let dry = |args: &[&str]| {
        let mut all = vec![
            "check",
            "--config",
            server.config.to_str().unwrap(),
            "--query",
        ];
        all.extend_from_slice(args);
        let out = lab.xdpdns(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = dry(&["x.a.example.test", "TXT"]);
    assert!(
        out.contains("rule[1]") && out.contains("pool \"a\"") && out.contains(POOL_A),
        "{out}"
    );
    let out = dry(&["x.b.example.test", "TXT", "--from", VIP_CLIENT]);
    assert!(out.contains("rule[2]") && out.contains(POOL_A), "{out}");
    let out = dry(&["x.tc.example.test", "TXT", "--tcp"]);
    assert!(
        out.contains("the default (forward)") && out.contains(POOL_B),
        "{out}"
    );
    let out = dry(&["host7.block.example", "A"]);
    assert!(out.contains("rule[0]") && out.contains("NXDOMAIN"), "{out}");
    // A reload changing the spoofing rule: every other rule keeps its hits.
    let before = server.wait_status("hits reported", |s| {
        let h = rule_hits(s);
        h.len() == 6 && h[0] >= 3 && h[1] >= 2 && h[2] >= 1 && h[3] >= 4 && h[4] >= 2
    })?;
    let before = rule_hits(&before);
    std::fs::write(&server.config, lab.config("r", &rules(&block, 30)))?;
    let out = server.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(800));
    let after = rule_hits(&server.status()?);
    assert_eq!(after.len(), 6);
    for i in [0, 1, 2, 4, 5] {
        assert!(after[i] >= before[i], "rule {i}: {before:?} -> {after:?}");
    }
    assert_eq!(
        after[3], 0,
        "the changed rule starts again: {before:?} -> {after:?}"
    );
    let out = txt(&["spoof.test", "A"]);
    assert!(answer_lines(&out).iter().any(|l| l[1] == "30"), "{out}");
    Ok(())
}

/// unbound in the client namespace, forwarding `gone.test.` to xdpdns.
struct Unbound(std::process::Child);

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unbound(lab: &Lab) -> anyhow::Result<Unbound> {
    let dir = lab.dir.join("unbound");
    std::fs::create_dir_all(&dir)?;
    let conf = format!(
        "server:\n  interface: 127.0.0.1\n  port: 5300\n  access-control: 127.0.0.0/8 allow\n  \
         username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  \
         module-config: \"iterator\"\n  local-zone: \"test.\" nodefault\n  do-ip6: no\n  verbosity: 0\n  use-syslog: no\n  logfile: \"\"\n\
         forward-zone:\n  name: \"gone.test.\"\n  forward-addr: {SERVER_V4}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("unbound.conf"), conf)?;
    let log = std::fs::File::create(dir.join("unbound.log"))?;
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.client_ns, "unbound", "-d", "-c"])
        .arg(dir.join("unbound.conf"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let u = Unbound(child);
    wait_for(Duration::from_secs(10), "unbound to listen", || {
        let out = lab.kdig_output(&["@127.0.0.1", "-p", "5300", "+norec", "localhost.", "A"]);
        out.contains("status:").then_some(())
    })?;
    Ok(u)
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_synthesized_nxdomain_is_cached_by_a_resolver() -> anyhow::Result<()> {
    let lab = Lab::new("negcache")?;
    let cfg = lab.config(
        "n",
        "[[rule]]\nqname_suffix = \"gone.test.\"\naction = \"nxdomain\"\n\
         soa = \"ns.gone.test. hostmaster.gone.test. 1 3600 600 86400 300\"\n",
    );
    let server = lab.start("n", &cfg)?;
    // Asked directly: NXDOMAIN with the SOA, TTL = its MINIMUM.
    let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "x.gone.test", "A"]);
    let soa = answer_lines(&out);
    assert!(
        out.contains("NXDOMAIN")
            && soa
                .iter()
                .any(|l| l[0] == "gone.test." && l[1] == "300" && l[3] == "SOA"),
        "{out}"
    );
    let _u = unbound(&lab)?;
    let ask = || lab.kdig_output(&["@127.0.0.1", "-p", "5300", "x.gone.test", "A"]);
    let first = ask();
    assert!(first.contains("NXDOMAIN"), "{first}");
    std::thread::sleep(Duration::from_millis(1100));
    let second = ask();
    assert!(second.contains("NXDOMAIN"), "{second}");
    // The second came from unbound's negative cache: its SOA's TTL went
    // down, and xdpdns saw one query from unbound (plus ours above).
    let ttl = |out: &str| {
        answer_lines(out)
            .iter()
            .find(|l| l[3] == "SOA")
            .and_then(|l| l[1].parse::<u32>().ok())
    };
    assert!(ttl(&first).is_some_and(|t| t <= 300), "{first}");
    assert!(ttl(&second) < ttl(&first), "cached:\n{first}\n{second}");
    let s = server.wait_status("hits reported", |s| rule_hits(s).first() >= Some(&2))?;
    std::thread::sleep(Duration::from_millis(600));
    let s2 = server.status()?;
    assert_eq!(rule_hits(&s2)[0], 2, "{:#}", s["rules"]);
    Ok(())
}
