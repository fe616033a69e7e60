//! Who may use the service: the client ACL, enforced in the XDP program
//! before any redirect, on the kernel path by the dataplanes, and on TCP.

use std::time::Duration;

use xdpdns_netns_tests::*;

const OUTSIDE_V4: &str = "192.0.2.200";
const OUTSIDE_V6: &str = "2001:db8::99";
const RECORDER: &str = "192.0.2.20";
/// The lab client (and the backend) are inside, the extra addresses not.
const NARROW: &str = "[acl]\nallow = [\"192.0.2.0/25\", \"2001:db8::2/128\"]\n";

fn lab_with_outsider(test: &str) -> anyhow::Result<Lab> {
    let lab = Lab::new(test)?;
    lab.client_addr(&format!("{OUTSIDE_V4}/24"), CLIENT_IF)?;
    lab.client_addr(&format!("{OUTSIDE_V6}/64"), CLIENT_IF)?;
    Ok(lab)
}

fn from(lab: &Lab, source: &str, server: &str, extra: &[&str]) -> String {
    let (b, at) = (format!("-b{source}"), format!("@{server}"));
    let mut args = vec![b.as_str(), at.as_str()];
    args.extend_from_slice(extra);
    lab.kdig(&args)
}

fn listen<'a>(s: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    s["acl"]["listen"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["address"] == addr))
        .unwrap_or(&serde_json::Value::Null)
}

#[test]
#[ignore = "needs root: run by make test"]
fn clients_outside_the_acl_get_nothing_and_nothing_reaches_the_backend() -> anyhow::Result<()> {
    let lab = lab_with_outsider("acldrop")?;
    lab.client_addr(&format!("{RECORDER}/24"), CLIENT_IF)?;
    let recorder = RecordingBackend::start(&lab, &format!("{RECORDER}:53"))?;
    let cfg = lab.config(
        "a",
        &format!(
            "{NARROW}[[backend]]\naddress = \"{RECORDER}:53\"\n[backend.health]\nqname = \"health.test.\"\n\
             interval_ms = 600000\n[metrics]\naddress = \"127.0.0.1:9153\"\n"
        ),
    );
    let server = lab.start("a", &cfg)?;
    server.wait_status("backend resolved", |s| s["backends"][0]["mac"].is_string())?;
    let v6 = SERVER_V6.to_string();
    for _ in 0..3 {
        assert_eq!(
            from(&lab, CLIENT_V4, SERVER_V4, &["inside.test"]),
            "NOERROR"
        );
        assert_eq!(from(&lab, CLIENT_V6, &v6, &["inside.test"]), "NOERROR");
    }
    for _ in 0..2 {
        let out = from(&lab, OUTSIDE_V4, SERVER_V4, &["+timeout=1", "outside.test"]);
        assert!(out.starts_with("no answer"), "{out}");
        let out = from(&lab, OUTSIDE_V6, &v6, &["+timeout=1", "outside.test"]);
        assert!(out.starts_with("no answer"), "{out}");
    }
    // TCP: the connection is closed at once (inside, it is relayed; this
    // backend has no TCP, so only the accepting is seen).
    let out = from(
        &lab,
        OUTSIDE_V4,
        SERVER_V4,
        &["+tcp", "+timeout=1", "outside.test"],
    );
    assert!(out.starts_with("no answer"), "{out}");
    from(
        &lab,
        CLIENT_V4,
        SERVER_V4,
        &["+tcp", "+timeout=1", "inside.test"],
    );

    let s = server.wait_status("ACL counters", |s| {
        listen(s, &format!("{SERVER_V4}:53"))["acl_dropped"] == 2
            && listen(s, &format!("[{SERVER_V6}]:53"))["acl_dropped"] == 2
            && s["tcp"]["acl_denied"] == 1
            && s["tcp"]["accepted"] == 1
    })?;
    assert_eq!(
        listen(&s, &format!("{SERVER_V4}:53"))["allowed"],
        3,
        "{s:#}"
    );
    assert_eq!(
        listen(&s, &format!("[{SERVER_V6}]:53"))["allowed"],
        3,
        "{s:#}"
    );
    assert_eq!(xdp(&s, "acl_dropped"), 4, "{s:#}");
    assert_eq!(s["acl"]["action"], "drop");
    // A denied query never cost a frame: the dataplanes saw the allowed ones only.
    assert_eq!(
        total(&s, "xsk", "received"),
        6 + 6,
        "6 queries, 6 replies: {s:#}"
    );

    let text = lab.http_get("127.0.0.1:9153", "/metrics")?;
    assert_eq!(
        series(
            &text,
            &format!(
                "xdpdns_listen_queries_total{{listen=\"{SERVER_V4}:53\",outcome=\"acl_dropped\"}}"
            )
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            &format!(
                "xdpdns_listen_queries_total{{listen=\"[{SERVER_V6}]:53\",outcome=\"allowed\"}}"
            )
        ),
        Some(3.0),
        "{text}"
    );

    let seen = recorder.finish()?;
    let names: Vec<String> = seen
        .iter()
        .map(|s| String::from_utf8_lossy(&s.qname).into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("outside")),
        "the backend saw a denied query: {names:?}"
    );
    assert!(
        names.iter().filter(|n| n.contains("inside")).count() == 6,
        "{names:?}"
    );
    Ok(())
}

/// On a veth the program's own answers (XDP_TX) reach the peer only if the
/// peer runs an XDP program, which the lab's client does not: the loader
/// sees a veth and has the kernel path answer REFUSED instead (on a NIC the
/// XDP program answers; the frame it builds is checked in `hostile.rs`).
#[test]
#[ignore = "needs root: run by make test"]
fn action_refused_answers_outsiders_without_costing_a_frame() -> anyhow::Result<()> {
    let lab = lab_with_outsider("aclrefused")?;
    let cfg = lab.config(
        "r",
        "[acl]\nallow = [\"192.0.2.0/25\"]\naction = \"refused\"\n\
         [[rule]]\nqname_suffix = \"test.\"\naction = \"nxdomain\"\n",
    );
    let server = lab.start("r", &cfg)?;
    assert_eq!(from(&lab, CLIENT_V4, SERVER_V4, &["a.test"]), "NXDOMAIN");
    assert_eq!(from(&lab, OUTSIDE_V4, SERVER_V4, &["a.test"]), "REFUSED");
    // No IPv6 prefix is allowed: every IPv6 client is outside.
    let v6 = SERVER_V6.to_string();
    assert_eq!(from(&lab, CLIENT_V6, &v6, &["a.test"]), "REFUSED");
    assert_eq!(
        from(&lab, OUTSIDE_V6, &v6, &["+edns", "+nsid", "a.test"]),
        "REFUSED"
    );
    let s = server.wait_status("counted", |s| {
        listen(s, &format!("{SERVER_V4}:53"))["acl_refused"] == 1
            && listen(s, &format!("[{SERVER_V6}]:53"))["acl_refused"] == 2
            && s["totals"]["acl_refused"] == 3
    })?;
    assert_eq!(xdp(&s, "acl_to_kernel"), 3, "{s:#}");
    assert_eq!(
        total(&s, "xsk", "received"),
        1,
        "the refused ones never took a UMEM frame: {s:#}"
    );
    Ok(())
}

/// The program decides a client the list covers or misses by whole /16s
/// from its fast path, and asks the trie only in a /16 a longer prefix lies
/// in: each case, both families, against what the list says.
#[test]
#[ignore = "needs root: run by make test"]
fn the_fast_path_and_the_trie_decide_alike() -> anyhow::Result<()> {
    let lab = lab_with_outsider("aclfast")?;
    let rule = "[[rule]]\nqname_suffix = \"test.\"\naction = \"nxdomain\"\n";
    let acl = |allow: &str| format!("[acl]\nallow = [{allow}]\n{rule}");
    let v6 = SERVER_V6.to_string();
    let ask = |source: &str| {
        let server = if source.contains(':') { &v6 } else { SERVER_V4 };
        let out = from(&lab, source, server, &["+timeout=1", "a.test"]);
        match out.as_str() {
            "NXDOMAIN" => true,
            o if o.starts_with("no answer") => false,
            o => panic!("{source}: {o}"),
        }
    };
    // (allow list, lab client served, outsider served), per family: no
    // prefix in their /16s; a prefix covering their /16s; a longer prefix
    // in them (the lab client inside it, the outsider not).
    let cases = [
        ("\"10.0.0.0/8\", \"fd00::/8\"", false, false),
        ("\"192.0.0.0/16\", \"2001::/16\"", true, true),
        ("\"192.0.2.0/25\", \"2001:db8::2/128\"", true, false),
        ("\"192.0.2.128/25\", \"2001:db8::99/128\"", false, true),
    ];
    let server = lab.start("f", &lab.config("f", &acl(cases[0].0)))?;
    let mut denied = 0;
    for (i, (allow, inside, outside)) in cases.iter().enumerate() {
        if i > 0 {
            std::fs::write(&server.config, lab.config("f", &acl(allow)))?;
            let out = server.cli(&["reload"]);
            assert!(out.status.success(), "reload {allow}: {out:?}");
        }
        for (client, outsider) in [(CLIENT_V4, OUTSIDE_V4), (CLIENT_V6, OUTSIDE_V6)] {
            let s = || server.status().unwrap_or_default();
            assert_eq!(ask(client), *inside, "{client} with {allow}: {:#}", s());
            assert_eq!(
                ask(outsider),
                *outside,
                "{outsider} with {allow}: {:#}",
                s()
            );
            denied += usize::from(!inside) + usize::from(!outside);
        }
    }
    let s = server.wait_status("every denial counted", |s| {
        xdp(s, "acl_dropped") == denied as u64
    })?;
    assert_eq!(total(&s, "kernel", "received"), 0, "{s:#}");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn the_kernel_path_applies_the_same_acl() -> anyhow::Result<()> {
    let lab = lab_with_outsider("aclkernel")?;
    // Nothing redirected: every query takes the kernel sockets.
    let cfg = lab.config_full("k", "redirect = false", "", NARROW);
    let server = lab.start("k", &cfg)?;
    assert_eq!(from(&lab, CLIENT_V4, SERVER_V4, &["a.test"]), "REFUSED");
    let out = from(&lab, OUTSIDE_V4, SERVER_V4, &["+timeout=1", "a.test"]);
    assert!(out.starts_with("no answer"), "{out}");
    let s = server.wait_status("kernel-path ACL drop counted", |s| {
        dropped(s, "kernel", "acl_denied") == 1
    })?;
    assert_eq!(total(&s, "kernel", "answered"), 1, "{s:#}");
    assert_eq!(total(&s, "xsk", "received"), 0, "{s:#}");

    // action = "refused": the dataplane answers REFUSED and counts it.
    let refused = lab.config_full(
        "k",
        "redirect = false",
        "",
        "[acl]\nallow = [\"192.0.2.0/25\"]\naction = \"refused\"\n",
    );
    std::fs::write(&server.config, refused)?;
    let out = server.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(from(&lab, OUTSIDE_V4, SERVER_V4, &["a.test"]), "REFUSED");
    server.wait_status("acl_refused counted", |s| {
        s["totals"]["acl_refused"].as_u64().unwrap_or(0) == 1
    })?;
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn reloads_swap_the_acl_without_a_moment_of_denying_allowed_clients() -> anyhow::Result<()> {
    let lab = lab_with_outsider("aclreload")?;
    let server = lab.start("s", &lab.config("s", NARROW))?;
    let out = from(&lab, OUTSIDE_V4, SERVER_V4, &["+timeout=1", "a.test"]);
    assert!(out.starts_with("no answer"), "{out}");
    let dropped_before = xdp(&server.status()?, "acl_dropped");
    assert_eq!(dropped_before, 1);

    // The lab client (inside both lists) sends throughout; the ACL flips
    // between the narrow and the open list every 300 ms.
    let gun = lab.kxdpgun(3000, 4, SERVER_V4)?;
    let open = lab.config("s", "[acl]\nallow = [\"0.0.0.0/0\", \"::/0\"]\n");
    let narrow = lab.config("s", NARROW);
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(&server.config, if i % 2 == 0 { &open } else { &narrow })?;
        let out = server.cli(&["reload"]);
        assert!(out.status.success(), "reload {i}: {out:?}");
    }
    let load = Lab::kxdpgun_result(gun)?;
    let s = server.status()?;
    assert_eq!(
        xdp(&s, "acl_dropped"),
        dropped_before,
        "an allowed client was denied during a swap: {s:#}"
    );
    assert!(
        load.received * 100 >= load.sent * 99,
        "answers {load:?}: {s:#}"
    );
    // The last reload left the list open: the outsider is served now.
    std::fs::write(&server.config, &open)?;
    assert!(server.cli(&["reload"]).status.success());
    assert_eq!(from(&lab, OUTSIDE_V4, SERVER_V4, &["a.test"]), "REFUSED");
    Ok(())
}

/// Where XDP_TX reaches the client (its veth end runs XDP: kxdpgun's), the
/// XDP program answers REFUSED itself: every answer it builds is one the
/// client accepts.
#[test]
#[ignore = "needs root: run by make test"]
fn the_xdp_program_answers_refused_itself_where_xdp_tx_reaches_the_client() -> anyhow::Result<()> {
    let lab = lab_with_outsider("acltx")?;
    let cfg = lab.config_full(
        "t",
        "tx_answers = \"always\"",
        "",
        "[acl]\nallow = [\"192.0.2.0/25\"]\naction = \"refused\"\n",
    );
    let server = lab.start("t", &cfg)?;
    // kxdpgun from the outside address, at a rate the lab holds.
    let file = lab.query_file(1000)?;
    let (load, text) = lab.kxdpgun_from(OUTSIDE_V4, 2000, 2, &file)?;
    let (sent, got) = (load.sent, load.received);
    let s = server.status()?;
    let refused = xdp(&s, "acl_refused");
    assert!(sent >= 2000, "{text}");
    assert_eq!(refused, sent, "every query answered in XDP: {s:#}\n{text}");
    assert_eq!(total(&s, "xsk", "received"), 0, "{s:#}");
    // kxdpgun reads its queue 0 only; XDP_TX lands on either queue.
    assert!(got * 3 >= sent, "kxdpgun received {got} of {sent}:\n{text}");
    assert!(text.contains("REFUSED"), "answers are REFUSED: {text}");
    Ok(())
}
