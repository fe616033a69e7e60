//! Abuse protection in the XDP program: a per-client rate limit shared by
//! every queue, exempt and blocked prefixes, a dry run.

use std::process::{Command, Stdio};
use std::time::Duration;

use xdpdns_netns_tests::*;

const HONEST: &str = "192.0.2.3";
const BLOCKED: &str = "192.0.2.4";
const EXEMPT: &str = "192.0.2.5";

/// dnsperf from `from` at `qps` for `secs`, from 16 source ports (both
/// queues), as many outstanding as a limited client needs.
fn dnsperf(lab: &Lab, from: &str, qps: u32, secs: u32) -> anyhow::Result<std::process::Child> {
    dnsperf_names(lab, from, qps, secs, "a.test A\nb.test AAAA\nc.test TXT\n")
}

fn dnsperf_names(
    lab: &Lab,
    from: &str,
    qps: u32,
    secs: u32,
    names: &str,
) -> anyhow::Result<std::process::Child> {
    let queries = lab.dir.join(format!("dnsperf-{from}.txt"));
    std::fs::write(&queries, names)?;
    Ok(Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client_ns,
            "dnsperf",
            "-s",
            SERVER_V4,
            "-a",
            from,
        ])
        .args(["-Q", &qps.to_string(), "-l", &secs.to_string(), "-t", "1"])
        .args(["-c", "16", "-q", "20000", "-d"])
        .arg(&queries)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

fn dnsperf_result(child: std::process::Child) -> anyhow::Result<(u64, u64)> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let grab = |key: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {key:?} in dnsperf output:\n{text}"))
    };
    Ok((grab("Queries sent:")?, grab("Queries completed:")?))
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_flooding_client_is_limited_as_one_across_queues_and_others_are_served() -> anyhow::Result<()> {
    let lab = Lab::new("limits")?;
    for a in [HONEST, BLOCKED, EXEMPT] {
        lab.client_addr(&format!("{a}/24"), CLIENT_IF)?;
    }
    let cfg = lab.config(
        "l",
        &format!(
            "[limits]\nqps_per_client = 200\nburst = 200\nexempt = [\"{EXEMPT}/32\"]\n\
             [[block]]\nprefix = \"{BLOCKED}/32\"\n"
        ),
    );
    let server = lab.start("l", &cfg)?;
    // The flood: 5,000 q/s for 4 s from the client's first address over
    // 16 source ports (both queues); beside it an honest client under its
    // rate (150 q/s) and an exempt one over it (1,000 q/s).
    let honest = dnsperf(&lab, HONEST, 150, 4)?;
    let exempt = dnsperf(&lab, EXEMPT, 1000, 4)?;
    let flooder = dnsperf(&lab, CLIENT_V4, 5000, 4)?;
    let (sent, received) = dnsperf_result(flooder)?;
    let flood = Load { sent, received };
    let (hs, hc) = dnsperf_result(honest)?;
    let (es, ec) = dnsperf_result(exempt)?;
    eprintln!("flood {flood:?}; honest {hc}/{hs}; exempt {ec}/{es}");
    // 200/s for 4 s plus the burst, ± 20 %.
    assert!(
        flood.sent >= 15_000 && (640..=1160).contains(&flood.received),
        "the flooder gets its rate: {flood:?}"
    );
    assert!(
        hc * 100 >= hs * 99 && hs >= 500,
        "the honest client (under its rate) is served: {hc}/{hs}"
    );
    assert!(
        ec * 100 >= es * 99 && es >= 3000,
        "the exempt client is not limited: {ec}/{es}"
    );
    let s = server.wait_status("limited queries counted", |s| {
        xdp(s, "rate_limited") + 200 >= flood.sent - flood.received
    })?;
    assert!(
        xdp(&s, "rate_limited") <= flood.sent - flood.received + 200,
        "counters match the flood: {flood:?} {s:#}"
    );
    // The flood reached both queues: one client, limited as one.
    for q in s["queues"].as_array().unwrap() {
        assert!(
            q["counters"]["xsk"]["received"].as_u64().unwrap_or(0) >= 100,
            "both queues saw the flooder's allowed share: {s:#}"
        );
    }
    // A blocked prefix is dropped in XDP: the dataplanes never see it.
    let before = total(&s, "xsk", "received");
    let out = lab.kdig_output(&["-b", BLOCKED, &format!("@{SERVER_V4}"), "blocked.test"]);
    assert!(out.contains("response timeout"), "no answer: {out}");
    let s = server.wait_status("the block counted", |s| xdp(s, "blocked") >= 1)?;
    assert_eq!(total(&s, "xsk", "received"), before, "{s:#}");
    assert_eq!(xdp(&s, "dry_run"), 0);
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_dry_run_drops_nothing_and_counts_everything() -> anyhow::Result<()> {
    let lab = Lab::new("dryrun")?;
    lab.client_addr(&format!("{BLOCKED}/24"), CLIENT_IF)?;
    let cfg = lab.config(
        "d",
        &format!(
            "[limits]\nqps_per_client = 100\ndry_run = true\n[[block]]\nprefix = \"{BLOCKED}/32\"\n"
        ),
    );
    let server = lab.start("d", &cfg)?;
    let gun = lab.kxdpgun(2000, 2, SERVER_V4)?;
    let flood = Lab::kxdpgun_result(gun)?;
    assert!(
        flood.received * 100 >= flood.sent * 99,
        "nothing limited: {flood:?}"
    );
    assert_eq!(
        lab.kdig(&["-b", BLOCKED, &format!("@{SERVER_V4}"), "blocked.test"]),
        "REFUSED",
        "nothing blocked"
    );
    let s = server.wait_status("would-be drops counted", |s| {
        xdp(s, "dry_run") >= flood.sent.saturating_sub(400)
    })?;
    assert_eq!(xdp(&s, "rate_limited") + xdp(&s, "blocked"), 0, "{s:#}");
    // A reload that turns the dry run off applies at once.
    let cfg = cfg.replace("dry_run = true", "dry_run = false");
    std::fs::write(&server.config, &cfg)?;
    let out = server.cli(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("limits and blocks replaced"), "{said}");
    let gun = lab.kxdpgun(2000, 2, SERVER_V4)?;
    let flood = Lab::kxdpgun_result(gun)?;
    assert!(
        flood.received <= 400,
        "limited after the reload (100/s for 2 s, a burst of 100): {flood:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn blocks_added_at_run_time_apply_at_once_and_expire_on_time() -> anyhow::Result<()> {
    let lab = Lab::new("blockcli")?;
    lab.client_addr(&format!("{BLOCKED}/24"), CLIENT_IF)?;
    let cfg = lab.config(
        "b",
        "[limits]\nqps_per_client = 1000\nexempt = [\"192.0.2.5/32\"]\n",
    );
    let server = lab.start("b", &cfg)?;
    let ask = |args: &[&str]| server.said(args);
    let query = || lab.kdig(&["-b", BLOCKED, &format!("@{SERVER_V4}"), "b.test"]);
    assert_eq!(query(), "REFUSED", "served before the block");
    let (ok, said) = ask(&["block", "add", &format!("{BLOCKED}/32"), "--for", "4s"]);
    assert!(ok && said.contains("blocked for 4s"), "{said}");
    let added = std::time::Instant::now();
    let (ok, said) = ask(&["block", "list"]);
    assert!(
        ok && said.contains(&format!("{BLOCKED}/32 drop, 3s left")),
        "{said}"
    );
    // In force when the command returns: the next query is dropped in XDP.
    assert!(query().starts_with("no answer"), "blocked at once");
    let s = server.wait_status("the block counted", |s| xdp(s, "blocked") >= 1)?;
    assert!(xdp(&s, "blocked") >= 1);
    // Expires on time (4 s, checked every 100 ms).
    wait_for(Duration::from_secs(8), "the block to expire", || {
        (query() == "REFUSED").then_some(())
    })?;
    let lifted = added.elapsed();
    assert!(
        lifted >= Duration::from_millis(3900) && lifted < Duration::from_millis(7000),
        "expired after {lifted:?}"
    );
    // Until deleted; `del` lifts it at once.
    let (ok, said) = ask(&["block", "add", BLOCKED]);
    assert!(ok && said.contains("until deleted"), "{said}");
    assert!(query().starts_with("no answer"));
    // The XDP program holds it: replacing both dataplanes changes nothing.
    for q in ["0", "1"] {
        let (ok, said) = ask(&["restart-queue", q]);
        assert!(ok, "{said}");
    }
    server.wait_status("both queues back", |s| {
        s["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .all(|q| q["restarts"] == 1 && q["registered"] == true)
        })
    })?;
    assert!(
        query().starts_with("no answer"),
        "still blocked after restarts"
    );
    let (ok, said) = ask(&["block", "list"]);
    let hits: u64 = said
        .lines()
        .find(|l| l.starts_with(&format!("{BLOCKED}/32")))
        .and_then(|l| l.rsplit(", ").next()?.strip_suffix(" hits")?.parse().ok())
        .unwrap_or(0);
    // kdig sends each query once (+retry=0): two blocked queries so far.
    assert!(ok && hits == 2, "hits per block: {said}");
    // A plain block leaves TCP open (TC-slipped clients retry there)...
    let tcp_query = || lab.kdig(&["+tcp", "-b", BLOCKED, &format!("@{SERVER_V4}"), "b.test"]);
    assert_eq!(tcp_query(), "REFUSED", "TCP still served");
    let (ok, said) = ask(&["block", "del", BLOCKED]);
    assert!(ok, "{said}");
    assert_eq!(query(), "REFUSED");
    // ...one with --tcp closes it too, in XDP.
    let (ok, said) = ask(&["block", "add", BLOCKED, "--tcp"]);
    assert!(ok && said.contains("TCP too"), "{said}");
    assert!(tcp_query().starts_with("no answer"), "TCP blocked");
    assert!(query().starts_with("no answer"), "UDP blocked");
    let (ok, said) = ask(&["block", "list"]);
    assert!(ok && said.contains("(UDP and TCP)"), "{said}");
    let (ok, said) = ask(&["block", "del", BLOCKED]);
    assert!(ok, "{said}");
    assert_eq!(tcp_query(), "REFUSED");
    // What is refused, clearly.
    for (args, why) in [
        (vec!["block", "add", "192.0.2.5"], "exempt"),
        (vec!["block", "add", "192.0.2.0/33"], "192.0.2.0/33"),
        (vec!["block", "add", BLOCKED, "--for", "2d"], "at most"),
        (vec!["block", "add", BLOCKED, "--for", "soon"], "--for"),
        (
            vec!["block", "add", BLOCKED, "--action", "reject"],
            "drop, refused or tc",
        ),
        (vec!["block", "del", "198.51.100.0/24"], "not blocked"),
    ] {
        let (ok, said) = ask(&args);
        assert!(!ok && said.contains(why), "{args:?}: {said}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn blocked_queries_can_be_answered_refused_or_tc_in_xdp() -> anyhow::Result<()> {
    let lab = Lab::new("blockans")?;
    lab.client_addr(&format!("{BLOCKED}/24"), CLIENT_IF)?;
    // XDP_TX reaches a veth peer that runs XDP: kxdpgun's, from the
    // blocked address.
    let cfg = lab.config_full(
        "a",
        "tx_answers = \"always\"",
        "",
        &format!(
            "[[rule]]\nqname_suffix = \"b.test.\"\naction = \"nxdomain\"\n\
             [[block]]\nprefix = \"{BLOCKED}/32\"\naction = \"refused\"\n"
        ),
    );
    let server = lab.start("a", &cfg)?;
    let ask = |args: &[&str]| server.said(args);
    let names = lab.dir.join("b-names.txt");
    std::fs::write(&names, "x.b.test A\ny.b.test AAAA\n")?;
    // kxdpgun from the blocked address, 1,000 q/s for 2 s: (sent,
    // received, its output).
    let blocked_load = || -> anyhow::Result<(u64, u64, String)> {
        let (load, text) = lab.kxdpgun_from(BLOCKED, 1000, 2, &names)?;
        Ok((load.sent, load.received, text))
    };
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V4}"), "x.b.test"]),
        "NXDOMAIN",
        "others are served"
    );
    let (sent, got, text) = blocked_load()?;
    let s = server.wait_status("answered in XDP", |s| xdp(s, "block_answered") >= sent)?;
    assert!(sent >= 1900, "{text}");
    assert_eq!(xdp(&s, "block_answered"), sent, "every query: {s:#}");
    assert_eq!(xdp(&s, "blocked"), 0, "nothing dropped: {s:#}");
    // kxdpgun reads its queue 0 only; XDP_TX lands on either queue.
    assert!(got * 3 >= sent, "received {got} of {sent}:\n{text}");
    assert!(
        text.contains("responded REFUSED") && !text.contains("NXDOMAIN"),
        "the configured block answers REFUSED:\n{text}"
    );
    // A run-time block of the same prefix says what it gets: TC=1.
    let (ok, said) = ask(&["block", "add", BLOCKED, "--action", "tc", "--for", "60s"]);
    assert!(ok && said.contains("answered tc"), "{said}");
    let (ok, said) = ask(&["block", "list"]);
    assert!(ok && said.contains(&format!("{BLOCKED}/32 tc, ")), "{said}");
    let (sent2, got2, text) = blocked_load()?;
    let s = server.wait_status("answered in XDP", |s| {
        xdp(s, "block_answered") >= sent + sent2
    })?;
    assert_eq!(xdp(&s, "blocked"), 0, "{s:#}");
    assert!(got2 * 3 >= sent2, "received {got2} of {sent2}:\n{text}");
    assert!(
        text.contains("responded NOERROR")
            && !text.contains("REFUSED")
            && !text.contains("NXDOMAIN"),
        "TC=1 answers (NOERROR, the question only):\n{text}"
    );
    // Lifted: the configured action again.
    let (ok, said) = ask(&["block", "del", BLOCKED]);
    assert!(ok, "{said}");
    let (ok, said) = ask(&["block", "list"]);
    assert!(
        ok && said.contains(&format!("{BLOCKED}/32 refused, configured")),
        "{said}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn limited_queries_are_slipped_or_refused_in_xdp() -> anyhow::Result<()> {
    let lab = Lab::new("slip")?;
    // kxdpgun receives with an XDP program of its own, so XDP_TX answers
    // reach it through the veth.
    for (i, (how, extra)) in [
        ("slip 2", "action = \"drop\"\nslip = 2\n"),
        ("refused", "action = \"refused\"\n"),
    ]
    .into_iter()
    .enumerate()
    {
        let instance = format!("s{i}");
        let cfg = lab.config_full(
            &instance,
            "tx_answers = \"always\"",
            "",
            &format!("[limits]\nqps_per_client = 200\nburst = 200\n{extra}"),
        );
        let mut server = lab.start(&instance, &cfg)?;
        let flood = Lab::kxdpgun_result(lab.kxdpgun(5000, 3, SERVER_V4)?)?;
        let s = server.wait_status("limited queries counted", |s| {
            xdp(s, "rate_limited") + xdp(s, "limit_answered") + 1000 >= flood.sent
        })?;
        let (dropped, answered) = (xdp(&s, "rate_limited"), xdp(&s, "limit_answered"));
        eprintln!("{how}: {flood:?}, dropped {dropped}, answered in XDP {answered}");
        let served = flood.sent - dropped - answered;
        assert!(
            (640..=960).contains(&served),
            "{how}: 200/s for 3 s + burst: {served}"
        );
        match how {
            "refused" => {
                assert_eq!(dropped, 0, "{how}");
                assert!(flood.received * 100 >= flood.sent * 98, "{how}: {flood:?}");
            }
            _ => {
                // Every second limited query slipped (per CPU: ± one each).
                assert!(
                    answered.abs_diff(dropped) <= 4,
                    "{how}: {answered} vs {dropped}"
                );
                assert!(
                    flood.received >= served + answered * 95 / 100,
                    "{how}: {flood:?}"
                );
            }
        }
        assert!(server.stop()?.success());
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_dynamic_nxdomain_rule_blocks_a_random_subdomain_flooder_only() -> anyhow::Result<()> {
    let lab = Lab::new("dynblock")?;
    lab.client_addr(&format!("{HONEST}/24"), CLIENT_IF)?;
    // NXDOMAIN a second per client: 1,000 anywhere, 50 under victim.test
    // (the random-subdomain rate under one suffix).
    let cfg = lab.config(
        "y",
        "[[rule]]\nqname_suffix = [\"victim.test.\", \"other.test.\"]\naction = \"nxdomain\"\n\
         [[dynamic_block]]\nrcode = \"NXDOMAIN\"\nrate = 1000\nwindow_s = 2\nblock_s = 30\n\
         [[dynamic_block]]\nrcode = \"NXDOMAIN\"\nrate = 50\nsuffix = \"Victim.Test\"\nwindow_s = 2\nblock_s = 30\n",
    );
    let server = lab.start("y", &cfg)?;
    let random: String = (0..500)
        .map(|i| format!("r{i:x}q{}.VicTim.test A\n", i * 7919 % 1000))
        .collect();
    // The normal client: 150 NXDOMAIN a second, 15 of them under
    // victim.test, the rest under other.test.
    let mixed: String = (0..500)
        .map(|i| {
            let zone = if i % 10 == 0 { "victim" } else { "other" };
            format!("n{i:x}.{zone}.test A\n")
        })
        .collect();
    // The flooder: 500 NXDOMAIN a second under victim.test.
    let honest = dnsperf_names(&lab, HONEST, 150, 6, &mixed)?;
    let flooder = dnsperf_names(&lab, CLIENT_V4, 500, 6, &random)?;
    let (fs, fc) = dnsperf_result(flooder)?;
    let (hs, hc) = dnsperf_result(honest)?;
    eprintln!("flooder {fc}/{fs}; honest {hc}/{hs}");
    // Blocked after the 2 s window at most (plus a 100 ms tick): at most
    // ~2.5 s of its 6 s answered.
    assert!(
        fs >= 2500 && fc <= fs / 2,
        "the flooder is blocked: {fc}/{fs}"
    );
    assert!(
        hc * 100 >= hs * 99 && hs >= 800,
        "the normal client is not, whatever its NXDOMAIN rate elsewhere: {hc}/{hs}"
    );
    let out = server.cli(&["block", "list"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains(&format!("{CLIENT_V4}/32 drop")), "{said}");
    assert!(!said.contains(HONEST), "{said}");
    let s = server.wait_status("blocked in XDP", |s| xdp(s, "blocked") >= 1000)?;
    assert!(xdp(&s, "blocked") + fc + 100 >= fs, "{s:#}");
    Ok(())
}
