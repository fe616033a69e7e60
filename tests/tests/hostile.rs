//! A burst of malformed frames crashes nothing, is counted, and valid queries
//! around it are still answered.

use std::net::SocketAddr;

use xdpdns_netns_tests::frames::{self, FrameSpec};
use xdpdns_netns_tests::*;

#[test]
#[ignore = "needs root: run by make test"]
fn malformed_frames_are_counted_and_crash_nothing() -> anyhow::Result<()> {
    let lab = Lab::new("hostile")?;
    // Room for frames larger than a UMEM frame can hold.
    lab.set_mtu(3000)?;
    let server = lab.start("h", &lab.config("h", ""))?;
    let pids = server.dataplane_pids()?;
    let v4 = format!("@{SERVER_V4}");
    assert_eq!(lab.kdig(&[&v4, "before.example"]), "REFUSED");

    let spec = FrameSpec {
        src_mac: mac_of(&lab.client_ns, CLIENT_IF)?,
        dst_mac: mac_of(&lab.server_ns, SERVER_IF)?,
        src: format!("{CLIENT_V4}:40000").parse::<SocketAddr>()?,
        dst: format!("{SERVER_V4}:53").parse::<SocketAddr>()?,
        vlan: None,
        zero_udp_checksum: false,
    };
    let good = frames::build(&spec, &frames::query(7, "good.example", 1, None));
    let mut burst: Vec<(&str, Vec<u8>)> = Vec::new();

    burst.push(("ethernet header only", good[..14].to_vec()));
    burst.push(("IPv4 header cut short", good[..24].to_vec()));
    burst.push(("UDP header cut short", good[..38].to_vec()));
    let mut f = good.clone();
    let past = (f.len() - 14 + 40) as u16;
    f[16..18].copy_from_slice(&past.to_be_bytes());
    frames::fix_ipv4_checksum(&mut f);
    burst.push(("IP total length past the frame", f));
    let mut f = good.clone();
    f[38..40].copy_from_slice(&9u16.to_be_bytes());
    burst.push(("UDP length too short", f));
    let mut f = good.clone();
    f[38..40].copy_from_slice(&4000u16.to_be_bytes());
    burst.push(("UDP length too long", f));
    let mut f = good.clone();
    let last = f.len() - 1;
    f[last] ^= 0xff;
    burst.push(("bad UDP checksum", f));
    // IPv4 options: 4 bytes of NOP inserted, IHL 6.
    let mut f = good[..34].to_vec();
    f[14] = 0x46;
    f.extend_from_slice(&[1, 1, 1, 1]);
    f.extend_from_slice(&good[34..]);
    let tl = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&tl.to_be_bytes());
    frames::fix_ipv4_checksum(&mut f);
    burst.push(("IPv4 options", f));
    let mut f = good.clone();
    f[20] = 0x20; // more fragments
    frames::fix_ipv4_checksum(&mut f);
    burst.push(("first fragment", f));
    burst.push((
        "DNS shorter than 12 bytes",
        frames::build(&spec, &[0xab; 11]),
    ));
    let mut q = frames::query(8, "x.example", 1, None);
    q[5] = 0;
    burst.push(("QDCOUNT 0", frames::build(&spec, &q)));
    let mut q = frames::query(9, ".", 1, None)[..12].to_vec();
    q.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    burst.push(("label pointer loop", frames::build(&spec, &q)));
    let mut q = frames::query(10, "x.example", 1, None);
    q[2] |= 0x80;
    burst.push(("a response (QR=1)", frames::build(&spec, &q)));
    burst.push(("random garbage", frames::build(&spec, &[0x5a; 300])));
    let mut f = good.clone();
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    burst.push(("unknown ethertype", f));

    let sock = lab.in_ns(false, || {
        frames::packet_socket(ifindex_of(&lab.client_ns, CLIENT_IF)?)
    })?;
    for round in 0..20 {
        for (what, f) in &burst {
            frames::send(&sock, f).map_err(|e| anyhow::anyhow!("{what} (round {round}): {e}"))?;
        }
    }
    // A frame larger than a UMEM frame holds goes to the kernel path, and is answered.
    let mut big = frames::query(11, "big.example", 1, None);
    big[11] = 1;
    big.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0]);
    let pad = 2200usize;
    big.extend_from_slice(&((pad + 4) as u16).to_be_bytes());
    big.extend_from_slice(&12u16.to_be_bytes()); // EDNS padding option
    big.extend_from_slice(&(pad as u16).to_be_bytes());
    big.extend(std::iter::repeat_n(0u8, pad));
    let big = frames::build(&spec, &big);
    assert!(big.len() > 1792);
    frames::send(&sock, &big)?;

    assert_eq!(lab.kdig(&[&v4, "after.example"]), "REFUSED");
    assert_eq!(
        lab.kdig(&[&format!("@{SERVER_V6}"), "after.example"]),
        "REFUSED"
    );

    // Malformed queries with a whole header get FORMERR (counted by
    // reason); what cannot be answered at all is dropped.
    let formerr =
        |s: &serde_json::Value, r: &str| s["totals"]["error_answers"][r].as_u64().unwrap_or(0);
    let s = server.wait_status("drops and error answers counted by reason", |s| {
        dropped(s, "xsk", "dns_short") >= 20
            && formerr(s, "dns_qdcount") >= 20
            && formerr(s, "dns_bad_qname") >= 20
            && dropped(s, "xsk", "dns_response") >= 20
            && dropped(s, "xsk", "bad_ip_header") >= 20
    })?;
    for outcome in [
        "truncated",
        "ipv4_options",
        "fragment",
        "not_ip",
        "too_large",
    ] {
        assert!(xdp(&s, outcome) > 0, "XDP counted {outcome}: {s:#}");
    }
    // Checksums are judged in XDP: a mismatch (a bad sum, a UDP length
    // that disagrees with the frame) goes to the kernel, which drops a
    // corrupt frame (and would accept an offloaded partial one).
    assert!(xdp(&s, "bad_csum") >= 60, "{s:#}");
    assert_eq!(dropped(&s, "xsk", "bad_checksum"), 0, "{s:#}");
    assert_eq!(dropped(&s, "xsk", "bad_udp_length"), 0, "{s:#}");
    assert!(
        total(&s, "kernel", "answered") >= 1,
        "the oversized query was answered via the kernel: {s:#}"
    );
    for q in s["queues"].as_array().unwrap() {
        assert_eq!(q["restarts"], 0, "no dataplane died: {s:#}");
    }
    assert_eq!(
        server.dataplane_pids()?,
        pids,
        "same dataplanes as before the burst"
    );

    // Without verification in XDP the dataplanes' own parser meets the same
    // burst: every frame is still counted and nothing dies.
    let text = std::fs::read_to_string(&server.config)?;
    std::fs::write(
        &server.config,
        text.replace("[xsk]\n", "[xsk]\nverify_checksums = false\n"),
    )?;
    let out = server.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    for round in 0..20 {
        for (what, f) in &burst {
            frames::send(&sock, f)
                .map_err(|e| anyhow::anyhow!("{what} (again, round {round}): {e}"))?;
        }
    }
    assert_eq!(lab.kdig(&[&v4, "after.example"]), "REFUSED");
    let s = server.wait_status("the dataplanes' own drops", |s| {
        dropped(s, "xsk", "bad_udp_length") >= 40 && dropped(s, "xsk", "dns_short") >= 40
    })?;
    assert_eq!(
        server.dataplane_pids()?,
        pids,
        "same dataplanes after the second burst: {s:#}"
    );
    Ok(())
}
