//! Conformance: standard probes (RFC 8906 §8, RFC 6891, 7766, 7873, 9619,
//! and the usual odd queries) sent to xdpdns forwarding to knotd and to
//! knotd directly, over UDP and TCP, IPv4 and IPv6; every answer read by a
//! DNS library (hickory-proto) and compared field by field. What xdpdns
//! must answer itself (malformed queries) is checked against the code the
//! RFCs require, with and without backends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::Message;
use xdpdns_netns_tests::*;

const BACKEND_V4: &str = "192.0.2.10";
const BACKEND_V6: &str = "2001:db8::10";
const FORMERR: u16 = 1;
const NOTIMP: u16 = 4;
const REFUSED: u16 = 5;
const BADVERS: u16 = 16;

/// What is compared of an answer: everything but the ID.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    opcode: u8,
    aa: bool,
    tc: bool,
    rd: bool,
    ra: bool,
    ad: bool,
    cd: bool,
    rcode: u16,
    counts: [u16; 4],
    /// EDNS version and DO, if the answer has an OPT record.
    edns: Option<(u8, bool)>,
}

fn summary(probe: &str, id: u16, wire: &[u8]) -> Summary {
    assert!(wire.len() >= 12, "{probe}: short answer {wire:02x?}");
    // hickory knows only opcodes QUERY, STATUS, NOTIFY, UPDATE: it reads
    // the rest with opcode 0, and the opcode is taken from the wire.
    let opcode = wire[2] >> 3 & 0xf;
    let mut readable = wire.to_vec();
    if ![0, 2, 4, 5].contains(&opcode) {
        readable[2] &= !0x78;
    }
    let m = Message::from_vec(&readable)
        .unwrap_or_else(|e| panic!("{probe}: unparsable answer {e}: {wire:02x?}"));
    let h = m.header();
    assert_eq!(h.id(), id, "{probe}: the query's ID");
    assert_eq!(
        h.message_type(),
        hickory_proto::op::MessageType::Response,
        "{probe}"
    );
    let edns = m.extensions().as_ref();
    let high = edns.map_or(0, |e| u16::from(e.rcode_high()));
    Summary {
        opcode,
        aa: h.authoritative(),
        tc: h.truncated(),
        rd: h.recursion_desired(),
        ra: h.recursion_available(),
        ad: h.authentic_data(),
        cd: h.checking_disabled(),
        rcode: (high << 4) | u16::from(h.response_code()) & 0xf,
        counts: [
            h.query_count(),
            h.answer_count(),
            h.name_server_count(),
            h.additional_count(),
        ],
        edns: edns.map(|e| (e.version(), e.dnssec_ok())),
    }
}

fn name(n: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for l in n.split('.').filter(|l| !l.is_empty()) {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.push(0);
    b
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut h = id.to_be_bytes().to_vec();
    h.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

fn question(n: &str, qtype: u16, class: u16) -> Vec<u8> {
    let mut q = name(n);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&class.to_be_bytes());
    q
}

/// An OPT record: payload size, version, flags word, options.
fn opt(size: u16, version: u8, flags: u16, options: &[(u16, &[u8])]) -> Vec<u8> {
    let mut rdata = Vec::new();
    for (code, data) in options {
        rdata.extend_from_slice(&code.to_be_bytes());
        rdata.extend_from_slice(&(data.len() as u16).to_be_bytes());
        rdata.extend_from_slice(data);
    }
    let mut o = vec![0, 0, 41];
    o.extend_from_slice(&size.to_be_bytes());
    o.extend_from_slice(&[0, version]);
    o.extend_from_slice(&flags.to_be_bytes());
    o.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    o.extend_from_slice(&rdata);
    o
}

const RD: u16 = 0x0100;
const CD: u16 = 0x0010;
const AD: u16 = 0x0020;
const DO: u16 = 0x8000;

/// Probes xdpdns relays: its answer must be knotd's own.
fn relayed(id: u16) -> Vec<(&'static str, Vec<u8>)> {
    let www = question("www.example.test", 1, 1);
    let e = opt(1232, 0, 0, &[]);
    let with = |flags: u16, q: &[u8], more: &[u8], ar: u16| {
        let mut m = header(id, flags, [1, 0, 0, ar]);
        m.extend_from_slice(q);
        m.extend_from_slice(more);
        m
    };
    let mut notify = header(id, 4 << 11, [1, 0, 0, 0]);
    notify.extend_from_slice(&question("example.test", 6, 1));
    let mut update = header(id, 5 << 11, [1, 0, 0, 0]);
    update.extend_from_slice(&question("example.test", 6, 1));
    let mut cookie_only = header(id, RD, [0, 0, 0, 1]);
    cookie_only.extend_from_slice(&opt(1232, 0, 0, &[(10, b"clientck")]));
    vec![
        ("plain A", with(RD, &www, &[], 0)),
        ("no RD", with(0, &www, &[], 0)),
        (
            "AAAA with EDNS",
            with(RD, &question("www.example.test", 28, 1), &e, 1),
        ),
        ("DO", with(RD, &www, &opt(1232, 0, DO, &[]), 1)),
        ("CD and AD", with(RD | CD | AD, &www, &e, 1)),
        (
            "0x20 case",
            with(RD, &question("wWw.ExAmPlE.TeSt", 1, 1), &[], 0),
        ),
        (
            "NXDOMAIN",
            with(RD, &question("nope.example.test", 1, 1), &e, 1),
        ),
        ("ANY", with(RD, &question("example.test", 255, 1), &e, 1)),
        (
            "CH TXT version.bind",
            with(0, &question("version.bind", 16, 3), &[], 0),
        ),
        (
            "unknown EDNS flag",
            with(RD, &www, &opt(1232, 0, 0x4000, &[]), 1),
        ),
        (
            "unknown EDNS option",
            with(RD, &www, &opt(1232, 0, 0, &[(65001, b"")]), 1),
        ),
        (
            "EDNS version 1 (BADVERS)",
            with(RD, &www, &opt(1232, 1, 0, &[]), 1),
        ),
        (
            "EDNS with a cookie",
            with(RD, &www, &opt(1232, 0, 0, &[(10, b"clientck")]), 1),
        ),
        ("NOTIFY", notify),
        ("UPDATE", update),
        ("IQUERY", with(1 << 11, &www, &[], 0)),
        ("STATUS", with(2 << 11, &www, &[], 0)),
        ("opcode 15, header only", header(id, 15 << 11, [0, 0, 0, 0])),
        ("QDCOUNT 0 with a cookie", cookie_only),
        (
            "large answer, bufsize 512",
            with(
                RD,
                &question("big.example.test", 16, 1),
                &opt(512, 0, 0, &[]),
                1,
            ),
        ),
    ]
}

/// Probes xdpdns answers itself, with or without backends: (name, query,
/// rcode, QDCOUNT of the answer).
fn malformed(id: u16) -> Vec<(&'static str, Vec<u8>, u16, u16)> {
    let www = question("www.example.test", 1, 1);
    let e = opt(1232, 0, 0, &[]);
    let msg = |counts: [u16; 4], parts: &[&[u8]]| {
        let mut m = header(id, RD, counts);
        for p in parts {
            m.extend_from_slice(p);
        }
        m
    };
    let mut non_root = vec![1, b'a', 0];
    non_root.extend_from_slice(&e[1..]);
    let mut pointer = header(id, RD, [1, 0, 0, 0]);
    pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    vec![
        (
            "two questions (RFC 9619)",
            msg([2, 0, 0, 0], &[&www, &www]),
            FORMERR,
            0,
        ),
        (
            "two OPT records",
            msg([1, 0, 0, 2], &[&www, &e, &e]),
            FORMERR,
            1,
        ),
        (
            "OPT in the answer section",
            msg([1, 1, 0, 0], &[&www, &e]),
            FORMERR,
            1,
        ),
        (
            "OPT with a non-root owner",
            msg([1, 0, 0, 1], &[&www, &non_root]),
            FORMERR,
            1,
        ),
        (
            "trailing garbage",
            msg([1, 0, 0, 0], &[&www, b"garbage"]),
            FORMERR,
            1,
        ),
        ("pointer in the question", pointer, FORMERR, 0),
        ("QDCOUNT 0, no cookie", msg([0, 0, 0, 0], &[]), FORMERR, 0),
        (
            "truncated question",
            msg([1, 0, 0, 0], &[&www[..5]]),
            FORMERR,
            0,
        ),
    ]
}

/// Without backends: (name, query, rcode, QDCOUNT).
fn local(id: u16) -> Vec<(&'static str, Vec<u8>, u16, u16)> {
    let www = question("www.example.test", 1, 1);
    let mut v = malformed(id);
    let mut notify = header(id, 4 << 11, [1, 0, 0, 0]);
    notify.extend_from_slice(&question("example.test", 6, 1));
    let mut cookie_only = header(id, RD, [0, 0, 0, 1]);
    cookie_only.extend_from_slice(&opt(1232, 0, 0, &[(10, b"clientck")]));
    let mut badvers = header(id, RD, [1, 0, 0, 1]);
    badvers.extend_from_slice(&www);
    badvers.extend_from_slice(&opt(1232, 1, 0, &[]));
    let mut plain = header(id, RD, [1, 0, 0, 0]);
    plain.extend_from_slice(&www);
    v.extend([
        (
            "opcode 15, header only",
            header(id, 15 << 11, [0, 0, 0, 0]),
            NOTIMP,
            0,
        ),
        (
            "opcode 15 with flags",
            header(id, (15 << 11) | RD | CD | AD | 0x0400, [0, 0, 0, 0]),
            NOTIMP,
            0,
        ),
        ("NOTIFY", notify, NOTIMP, 1),
        ("QDCOUNT 0 with a cookie", cookie_only, FORMERR, 0),
        ("EDNS version 1", badvers, BADVERS, 1),
        ("plain query (default action)", plain, REFUSED, 1),
    ]);
    v
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Udp,
    Tcp,
}

/// Sends `msg` to `to` and returns the answer (UDP: up to three tries).
fn exchange(via: Via, to: SocketAddr, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
    match via {
        Via::Udp => {
            let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
            let s = UdpSocket::bind(any)?;
            s.set_read_timeout(Some(Duration::from_millis(700)))?;
            let mut buf = vec![0u8; 65535];
            for _ in 0..3 {
                s.send_to(msg, to)?;
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    return Ok(buf[..n].to_vec());
                }
            }
            anyhow::bail!("no answer over UDP from {to}")
        }
        Via::Tcp => {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(msg);
            s.write_all(&framed)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf)?;
            Ok(buf)
        }
    }
}

fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 53)
}

#[test]
#[ignore = "needs root: run by make test"]
fn through_xdpdns_every_probe_gets_the_backends_own_answer_or_the_rfcs() -> anyhow::Result<()> {
    let lab = Lab::new("conform")?;
    lab.client_addr(&format!("{BACKEND_V4}/24"), CLIENT_IF)?;
    lab.client_addr(&format!("{BACKEND_V6}/64"), CLIENT_IF)?;
    let c = lab.client_ns.clone();
    let _knot = lab.knot(
        &c,
        "c",
        &[&format!("{BACKEND_V4}@53"), &format!("{BACKEND_V6}@53")],
        1500,
    )?;
    let cfg = lab.config(
        "c",
        &format!(
            "[[backend]]\naddress = \"{BACKEND_V4}:53\"\n[backend.health]\nqname = \"www.example.test.\"\ninterval_ms = 200\n"
        ),
    );
    let server = lab.start("c", &cfg)?;
    server.wait_status("backend up with a MAC", |s| {
        s["backends"][0]["up"] == true && s["backends"][0]["mac"].is_string()
    })?;
    let mut compared = 0;
    lab.in_ns(false, || {
        for (ours, theirs) in [(SERVER_V4, BACKEND_V4), (SERVER_V6, BACKEND_V6)] {
            for via in [Via::Udp, Via::Tcp] {
                for (i, (probe, msg)) in relayed(0x5000).into_iter().enumerate() {
                    let what = format!("{probe} over {via:?} to {ours}");
                    let id = u16::from_be_bytes([msg[0], msg[1]]);
                    let direct = summary(&what, id, &exchange(via, addr(theirs), &msg)?);
                    let through = summary(&what, id, &exchange(via, addr(ours), &msg)?);
                    assert_eq!(through, direct, "{what} (probe {i}): xdpdns vs knotd");
                    if probe.starts_with("large") {
                        assert_eq!(
                            through.tc,
                            matches!(via, Via::Udp),
                            "{what}: TC only over UDP"
                        );
                    }
                    compared += 1;
                }
                for (probe, msg, rcode, qd) in malformed(0x6000) {
                    let what = format!("{probe} over {via:?} to {ours}");
                    let s = summary(&what, 0x6000, &exchange(via, addr(ours), &msg)?);
                    assert_eq!((s.rcode, s.counts[0]), (rcode, qd), "{what}: {s:?}");
                    assert_eq!(s.opcode, 0, "{what}");
                    assert!(s.rd, "{what}: RD copied");
                }
            }
        }
        Ok(())
    })?;
    eprintln!("{compared} answers through xdpdns equal to knotd's own");
    // Per family and transport: 2 QDCOUNT probes, 3 OPT probes, 1 trailing.
    let n = |s: &serde_json::Value, r: &str| s["totals"]["error_answers"][r].as_u64().unwrap_or(0);
    server.wait_status("error answers counted by reason", |s| {
        n(s, "dns_qdcount") >= 8 && n(s, "dns_bad_opt") >= 12 && n(s, "dns_trailing") >= 4
    })?;
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn answering_locally_every_probe_gets_the_code_the_rfcs_require() -> anyhow::Result<()> {
    let lab = Lab::new("conflocal")?;
    let server = lab.start("l", &lab.config("l", ""))?;
    lab.in_ns(false, || {
        for ours in [SERVER_V4, SERVER_V6] {
            for via in [Via::Udp, Via::Tcp] {
                for (probe, msg, rcode, qd) in local(0x7000) {
                    let what = format!("{probe} over {via:?} to {ours}");
                    let s = summary(&what, 0x7000, &exchange(via, addr(ours), &msg)?);
                    assert_eq!((s.rcode, s.counts[0]), (rcode, qd), "{what}: {s:?}");
                    assert_eq!(s.opcode, msg[2] >> 3 & 0xf, "{what}: opcode echoed");
                    assert_eq!(s.counts[1..3], [0, 0], "{what}");
                    let query_edns = probe.contains("with a cookie") || probe.contains("EDNS");
                    assert_eq!(
                        s.edns.is_some(),
                        query_edns,
                        "{what}: OPT only for a valid OPT"
                    );
                }
            }
        }
        Ok(())
    })?;
    let reasons = [
        "dns_opcode",
        "dns_qdcount",
        "dns_bad_opt",
        "dns_trailing",
        "dns_badvers",
    ];
    server.wait_status("error answers counted by reason", |s| {
        reasons
            .iter()
            .all(|r| s["totals"]["error_answers"][r].as_u64().unwrap_or(0) >= 4)
    })?;
    Ok(())
}
