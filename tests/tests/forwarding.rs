//! xdpdns as a load balancer: queries forwarded to real DNS servers over
//! AF_XDP and over sockets, with health checks, MAC resolution and the
//! in-flight table shared by all queues.

use std::time::Duration;

use xdpdns_netns_tests::*;

const BACKEND_V4: &str = "192.0.2.10";
const BACKEND_V6: &str = "2001:db8::10";

fn backend_lab(test: &str) -> anyhow::Result<(Lab, Knot)> {
    let lab = Lab::new(test)?;
    lab.client_addr(&format!("{BACKEND_V4}/24"), CLIENT_IF)?;
    lab.client_addr(&format!("{BACKEND_V6}/64"), CLIENT_IF)?;
    let c = lab.client_ns.clone();
    let knot = lab.knot(
        &c,
        "b1",
        &[&format!("{BACKEND_V4}@53"), &format!("{BACKEND_V6}@53")],
        0,
    )?;
    Ok((lab, knot))
}

fn backend(addr: &str, extra: &str) -> String {
    format!(
        "[[backend]]\naddress = \"{addr}\"\n{extra}\n[backend.health]\nqname = \"www.example.test.\"\ninterval_ms = 200\n"
    )
}

fn answer_has(out: &str, data: &str) -> bool {
    out.contains("NOERROR")
        && out
            .lines()
            .any(|l| l.contains("ANSWER SECTION") || l.contains(data))
        && out.contains(data)
}

#[test]
fn forwards_over_af_xdp_from_both_families_to_a_real_server() -> anyhow::Result<()> {
    let (lab, _knot) = backend_lab("fwdxsk")?;
    let server = lab.start(
        "f",
        &lab.config("f", &backend(&format!("{BACKEND_V4}:53"), "")),
    )?;
    server.wait_status("backend up with a MAC", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["mac"].is_string()
    })?;
    for i in 0..10 {
        let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "www.example.test", "A"]);
        assert!(answer_has(&out, ZONE_A), "query {i} over IPv4:\n{out}");
        let out = lab.kdig_output(&[&format!("@{SERVER_V6}"), "www.example.test", "AAAA"]);
        assert!(
            answer_has(&out, ZONE_AAAA),
            "query {i} over IPv6 (to an IPv4 backend):\n{out}"
        );
    }
    let out = lab.kdig_output(&[&format!("@{SERVER_V4}"), "nope.example.test", "A"]);
    assert!(
        out.contains("NXDOMAIN"),
        "the backend's exact answer:\n{out}"
    );
    let s = server.wait_status("replies counted, nothing in flight", |s| {
        s["backends"][0]["replies"].as_u64().unwrap_or(0) >= 21
            && s["totals"]["forward"]["in_flight"] == 0
    })?;
    assert!(
        total(&s, "xsk", "received") >= 42,
        "queries and replies over AF_XDP: {s:#}"
    );
    assert_eq!(s["totals"]["forward"]["stray_replies"], 0, "{s:#}");
    let _ = Duration::ZERO;
    Ok(())
}
