//! The packet cache shared by every queue: real knotd as the backend, real
//! clients (kdig), the cache seen through the answers and the counters.

use std::time::{Duration, Instant};

use serde_json::Value;
use xdpdns_netns_tests::*;

const BACKEND_V4: &str = "192.0.2.10";

const RECORDS: &str = "c1 30 A 192.0.2.101\nshort 2 A 192.0.2.102\np1 300 A 192.0.2.110\nt1 30 A 192.0.2.56\n*.w 1 A 192.0.2.55\n";

/// The zone's records, with a TXT record too large for 1,232 bytes.
fn records() -> String {
    let chunk = format!("\"{}\"", "x".repeat(250));
    format!("{RECORDS}big TXT {}\n", vec![chunk; 6].join(" "))
}

fn backend_queries(s: &Value) -> u64 {
    s["backends"][0]["queries"].as_u64().unwrap_or(0)
}

fn cache(s: &Value, field: &str) -> u64 {
    s["totals"]["cache"][field].as_u64().unwrap_or(0)
}

fn queue_cache(s: &Value, field: &str) -> Vec<u64> {
    s["queues"]
        .as_array()
        .map(|qs| {
            qs.iter()
                .map(|q| q["counters"]["cache"][field].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// The TTL and data of the first answer record of kdig's output.
fn first_answer(out: &str) -> Option<(u32, String)> {
    let mut lines = out.lines().skip_while(|l| !l.contains("ANSWER SECTION"));
    lines.next()?;
    let rr: Vec<&str> = lines.next()?.split_whitespace().collect();
    Some((rr.get(1)?.parse().ok()?, rr.last()?.to_string()))
}

#[test]
#[ignore = "needs root: run by make test"]
fn answers_are_cached_for_every_queue_and_outlive_their_dataplanes() -> anyhow::Result<()> {
    let lab = Lab::new("cache")?;
    lab.client_addr(&format!("{BACKEND_V4}/24"), CLIENT_IF)?;
    let c = lab.client_ns.clone();
    let broken = "  - domain: broken.test\n    storage: \"/nonexistent\"\n    file: broken.zone\n";
    let mut knot = lab.knot_zones(&c, "b", &[&format!("{BACKEND_V4}@53")], &records(), broken)?;
    let cfg = lab.config(
        "k",
        &format!(
            "[[backend]]\naddress = \"{BACKEND_V4}:53\"\n[backend.health]\nqname = \"www.example.test.\"\ninterval_ms = 200\n\
             [cache]\nentries = 64\nstale_ttl = 60\n"
        ),
    );
    let server = lab.start("k", &cfg)?;
    let ask = |args: &[&str]| {
        let mut all = vec!["+nocookie", "@192.0.2.1"];
        all.extend_from_slice(args);
        lab.kdig_output(&all)
    };
    let settled = |what: &str, f: &dyn Fn(&Value) -> bool| server.wait_status(what, f);

    // One name asked 16 times from random ports (both queues): the
    // backend sees one query, the other queue answers from the cache.
    for _ in 0..16 {
        let out = ask(&["c1.example.test", "A"]);
        assert!(out.contains("192.0.2.101"), "{out}");
    }
    // Each queue reports on its own clock: wait for the insert as well.
    let s = settled("15 hits and the insert", &|s| {
        cache(s, "hits") >= 15 && cache(s, "inserts") >= 1 && backend_queries(s) >= 1
    })?;
    assert_eq!(backend_queries(&s), 1, "{:#}", s["totals"]["cache"]);
    assert_eq!(cache(&s, "inserts"), 1);
    let (hits, inserts) = (queue_cache(&s, "hits"), queue_cache(&s, "inserts"));
    let inserted_on = inserts.iter().position(|n| *n == 1).unwrap();
    assert!(
        hits.iter()
            .enumerate()
            .any(|(q, n)| q != inserted_on && *n > 0),
        "the other queue answered from the cache: hits {hits:?}, inserts {inserts:?}"
    );
    // The TTL counts down.
    std::thread::sleep(Duration::from_millis(1100));
    let (ttl, data) = first_answer(&ask(&["c1.example.test", "A"])).unwrap();
    assert!(ttl <= 29 && data == "192.0.2.101", "{ttl} {data}");
    // The asker's case in the question (and so in the answer's owner).
    // (dig: kdig lower-cases names.)
    let dig = lab.client(
        "dig",
        &[
            "+nocookie",
            "+noedns",
            "+tries=1",
            "+time=2",
            "@192.0.2.1",
            "C1.eXaMpLe.TeSt",
            "A",
        ],
    );
    let out = String::from_utf8_lossy(&dig.stdout);
    assert!(
        out.contains(";C1.eXaMpLe.TeSt.") && out.contains("192.0.2.101"),
        "{out}"
    );
    // DO and no DO: two entries.
    let out = ask(&["+dnssec", "c1.example.test", "A"]);
    assert!(out.contains("192.0.2.101"), "{out}");
    // Each queue reports on its own clock: wait for both hits as well.
    let s = settled("the DO query forwarded", &|s| {
        backend_queries(s) >= 2 && cache(s, "hits") >= 17
    })?;
    assert_eq!((backend_queries(&s), cache(&s, "hits")), (2, 17));
    // TCP (the TCP workers map the same cache): c1 from the cache, and a
    // name first asked over TCP is then a hit over UDP.
    assert!(ask(&["+tcp", "c1.example.test", "A"]).contains("192.0.2.101"));
    assert!(ask(&["+tcp", "t1.example.test", "A"]).contains("192.0.2.56"));
    let s = settled("the TCP queries counted", &|s| {
        cache(s, "hits") >= 18 && cache(s, "inserts") >= 3
    })?;
    let tcp_backend = s["backends"][0]["queries"].as_u64().unwrap_or(0);
    assert_eq!(
        tcp_backend, 3,
        "only t1 reached the backend: {:#}",
        s["totals"]["cache"]
    );
    assert!(ask(&["t1.example.test", "A"]).contains("192.0.2.56"));
    let s = settled("the UDP hit", &|s| cache(s, "hits") >= 19)?;
    assert_eq!(backend_queries(&s), 3);

    // NXDOMAIN: cached (for the SOA minimum, 300 s), its SOA TTL aged.
    let first = ask(&["nx1.example.test", "A"]);
    std::thread::sleep(Duration::from_millis(1100));
    let second = ask(&["nx1.example.test", "A"]);
    assert!(first.contains("NXDOMAIN") && second.contains("NXDOMAIN"));
    let soa_ttl = |out: &str| -> u32 {
        out.lines()
            .skip_while(|l| !l.contains("AUTHORITY SECTION"))
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    assert!(soa_ttl(&second) < soa_ttl(&first), "{first}\n{second}");
    // SERVFAIL (a zone knotd cannot load): cached for servfail_ttl (5 s).
    let servfail_at = Instant::now();
    assert!(ask(&["x.broken.test", "A"]).contains("SERVFAIL"));
    assert!(ask(&["x.broken.test", "A"]).contains("SERVFAIL"));
    let s = settled("negative answers cached", &|s| backend_queries(s) >= 5)?;
    assert_eq!(backend_queries(&s), 5, "one each for nx1 and broken");
    // TC=1 over UDP: never cached.
    for _ in 0..2 {
        let out = ask(&["+bufsize=1232", "+ignore", "big.example.test", "TXT"]);
        assert!(out.contains(" tc"), "{out}");
    }
    // The queue that sent a query and the one its reply reached report apart.
    settled("both TC queries forwarded, neither cached", &|s| {
        backend_queries(s) >= 7 && cache(s, "uncacheable") >= 2
    })?;

    // A zone change: the cached answer until its TTL (2 s) runs out.
    assert!(ask(&["short.example.test", "A"]).contains("192.0.2.102"));
    assert!(ask(&["p1.example.test", "A"]).contains("192.0.2.110"));
    std::fs::write(
        knot.dir.join("example.test.zone"),
        Lab::zone_text(
            &records()
                .replace("192.0.2.102", "192.0.2.103")
                .replace("192.0.2.110", "192.0.2.111"),
            2,
        ),
    )?;
    knot.reload()?;
    let changed = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ask(&["short.example.test", "A"]).contains("192.0.2.102"),
        "cached"
    );
    wait_for(Duration::from_secs(6), "the new address", || {
        ask(&["short.example.test", "A"])
            .contains("192.0.2.103")
            .then_some(())
    })?;
    assert!(changed.elapsed() >= Duration::from_millis(1500));
    // TTL 300: cached until purged, then the new address at once.
    assert!(ask(&["p1.example.test", "A"]).contains("192.0.2.110"));
    let out = server.cli(&["cache", "purge", "P1.example.test", "A"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settled("purged", &|s| cache(s, "purged") >= 1)?;
    assert!(ask(&["p1.example.test", "A"]).contains("192.0.2.111"));
    for (args, why) in [
        (vec!["cache", "purge", "bad..name"], "empty label"),
        (
            vec!["cache", "purge", "p1.example.test", "NOTATYPE"],
            "not a type",
        ),
    ] {
        let out = server.cli(&args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains(why),
            "{args:?}: {said}"
        );
    }
    let out = server.cli(&["cache", "stats"]);
    let stats = String::from_utf8_lossy(&out.stdout);
    assert!(
        stats.contains("purged=1") && stats.contains("queue 0"),
        "{stats}"
    );

    // A full cache (64 entries) evicts and keeps answering.
    for i in 0..200 {
        let out = ask(&[&format!("n{i}.w.example.test"), "A"]);
        assert!(out.contains("192.0.2.55"), "{out}");
    }
    let s = settled("200 more inserts", &|s| cache(s, "inserts") >= 200)?;
    assert!(cache(&s, "evictions") > 0, "{:#}", s["totals"]["cache"]);
    // (Their TTL is 1 s: dead now, so what is stored next takes their
    // places and evicts nothing the rest of the test needs.)
    std::thread::sleep(Duration::from_millis(1100));
    // The SERVFAIL has expired (5 s): asked again, it reaches the backend.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(servfail_at.elapsed()));
    // (The count once the last reports are in: two alike, 500 ms apart.)
    let before = wait_for(Duration::from_secs(5), "the counters to settle", || {
        let a = backend_queries(&server.status().ok()?);
        std::thread::sleep(Duration::from_millis(500));
        (backend_queries(&server.status().ok()?) == a).then_some(a)
    })?;
    assert!(ask(&["x.broken.test", "A"]).contains("SERVFAIL"));
    settled("the SERVFAIL asked again", &|s| backend_queries(s) > before)?;
    // Cached again just before the backend goes.
    for name in ["c1.example.test", "short.example.test"] {
        assert!(ask(&[name, "A"]).contains("NOERROR"));
    }
    knot.stop();
    settled("the backend down", &|s| s["backends"][0]["up"] == false)?;
    std::thread::sleep(Duration::from_millis(2100));
    // Expired (TTL 2) while the pool is down: served stale, TTL 0.
    let (ttl, data) = first_answer(&ask(&["short.example.test", "A"])).unwrap();
    assert_eq!((ttl, data.as_str()), (0, "192.0.2.103"));
    let s = settled("a stale answer", &|s| cache(s, "stale") >= 1)?;
    assert_eq!(cache(&s, "stale"), 1);

    // The cache outlives its dataplanes: restarted, and one killed.
    for q in ["0", "1"] {
        assert!(server.cli(&["restart-queue", q]).status.success());
    }
    settled("both queues back", &|s| {
        s["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .all(|q| q["restarts"] == 1 && q["registered"] == true)
        })
    })?;
    let pid = server.dataplane_pids()?[0];
    sh(std::process::Command::new("kill").args(["-9", &pid.to_string()]))?;
    settled("the killed one replaced", &|s| {
        s["queues"].as_array().is_some_and(|qs| {
            qs.iter().all(|q| q["registered"] == true) && qs.iter().any(|q| q["restarts"] == 2)
        })
    })?;
    for _ in 0..8 {
        let out = ask(&["c1.example.test", "A"]);
        assert!(
            out.contains("192.0.2.101"),
            "from the cache, the backend down: {out}"
        );
    }
    Ok(())
}
