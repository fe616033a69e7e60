//! Each selector, `not`, order, a 100 k-name list; the actions through the
//! whole pipeline.

use std::net::SocketAddr;

use super::*;
use crate::dns::{parse_query, testing::query};
use crate::pipeline::{Peer, Pipeline, Transport, Verdict};
use crate::testing::{PEER, answer_spec, suffix};
use xdpdns_common::config::{NameEntry, RuleSpec, SoaSpec, SpoofRecord};
use xdpdns_common::dns::name_to_wire;
use xdpdns_common::stats::DataplaneCounters;

fn facts(peer: Peer, size: usize) -> Facts {
    Facts {
        ip: peer.ip,
        local: peer.local,
        tcp: peer.transport == Transport::Tcp,
        size,
    }
}

fn rules_of(list: Vec<RuleSpec>) -> Rules {
    let mut spec = answer_spec(0, Action::Refused);
    spec.rules = list;
    Rules::new(&spec, &[])
}

/// The index of the rule `msg` matches from `peer`.
fn rule_for(r: &Rules, msg: &[u8], peer: Peer) -> usize {
    let q = parse_query(msg).unwrap();
    r.decide(msg, &q, &facts(peer, msg.len())).0
}

fn one(s: SelectorSpec) -> Rules {
    rules_of(vec![RuleSpec::new(s, Action::Drop)])
}

fn matches(r: &Rules, msg: &[u8], peer: Peer) -> bool {
    rule_for(r, msg, peer) == 0
}

fn a(name: &str) -> Vec<u8> {
    query(1, name, 1, None)
}

fn from(ip: &str) -> Peer {
    Peer {
        ip: ip.parse().unwrap(),
        ..PEER
    }
}

#[test]
fn names_exact_and_suffix() {
    let r = one(SelectorSpec {
        names: vec![
            NameEntry {
                wire: name_to_wire("exact.test.").unwrap(),
                exact: true,
            },
            NameEntry {
                wire: name_to_wire("below.test.").unwrap(),
                exact: false,
            },
        ],
        ..Default::default()
    });
    assert!(matches(&r, &a("EXACT.test."), PEER));
    assert!(!matches(&r, &a("x.exact.test."), PEER));
    assert!(matches(&r, &a("below.test."), PEER));
    assert!(matches(&r, &a("a.b.Below.TEST."), PEER));
    assert!(!matches(&r, &a("notbelow.test."), PEER));
    assert!(!matches(&r, &a("test."), PEER));
}

#[test]
fn source_and_listen() {
    let r = one(SelectorSpec {
        source: vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        ..Default::default()
    });
    assert!(matches(&r, &a("x."), from("198.51.100.7")));
    assert!(matches(&r, &a("x."), from("2001:db8::1")));
    assert!(!matches(&r, &a("x."), from("198.51.101.7")));
    assert!(!matches(&r, &a("x."), PEER));
    let other: SocketAddr = "10.0.0.1:5353".parse().unwrap();
    let r = one(SelectorSpec {
        listen: vec![other],
        ..Default::default()
    });
    assert!(!matches(&r, &a("x."), PEER));
    assert!(matches(
        &r,
        &a("x."),
        Peer {
            local: other,
            ..PEER
        }
    ));
}

/// Thousands of prefixes in one bucket of the interval index (one /8):
/// found by binary search, compiled in well under a second.
#[test]
fn many_prefixes_in_one_bucket() {
    let t = std::time::Instant::now();
    let r = one(SelectorSpec {
        source: (0..20_000u32)
            .map(|i| {
                format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, (i & 127) * 2)
                    .parse()
                    .unwrap()
            })
            .chain([
                "10.200.0.0/16".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ])
            .collect(),
        ..Default::default()
    });
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    // Even last octets are listed (0 to 254 under 10.0.0–77), odd ones not.
    assert!(matches(&r, &a("x."), from("10.0.3.8")));
    assert!(matches(&r, &a("x."), from("10.0.77.254")));
    assert!(!matches(&r, &a("x."), from("10.0.3.9")));
    assert!(!matches(&r, &a("x."), from("10.0.3.255")));
    assert!(matches(&r, &a("x."), from("10.200.9.9")));
    assert!(!matches(&r, &a("x."), from("10.201.0.0")));
    assert!(!matches(&r, &a("x."), from("11.0.3.8")));
    assert!(matches(&r, &a("x."), from("2001:db8::5")));
    assert!(!matches(&r, &a("x."), from("192.0.2.1")));
}

#[test]
fn qtype_qclass_opcode_rd() {
    let r = one(SelectorSpec {
        qtypes: vec![28, 16],
        ..Default::default()
    });
    assert!(matches(&r, &query(1, "x.", 28, None), PEER));
    assert!(matches(&r, &query(1, "x.", 16, None), PEER));
    assert!(!matches(&r, &a("x."), PEER));
    let mut ch = a("x.");
    let n = ch.len();
    ch[n - 1] = 3;
    let r = one(SelectorSpec {
        qclass: Some(3),
        ..Default::default()
    });
    assert!(matches(&r, &ch, PEER));
    assert!(!matches(&r, &a("x."), PEER));
    let r = one(SelectorSpec {
        opcode: Some(2),
        ..Default::default()
    });
    let mut status = a("x.");
    status[2] = 2 << 3;
    assert!(matches(&r, &status, PEER));
    assert!(!matches(&r, &a("x."), PEER));
    let r = one(SelectorSpec {
        rd: Some(false),
        ..Default::default()
    });
    let mut no_rd = a("x.");
    no_rd[2] &= !1;
    assert!(matches(&r, &no_rd, PEER));
    assert!(!matches(&r, &a("x."), PEER), "the helper sets RD");
}

#[test]
fn do_edns_size_and_transport() {
    let with_do = query(1, "x.", 1, Some((1232, 0, true)));
    let without_do = query(1, "x.", 1, Some((1232, 0, false)));
    let v1 = query(1, "x.", 1, Some((1232, 1, false)));
    let plain = a("x.");
    let r = one(SelectorSpec {
        dnssec_ok: Some(true),
        ..Default::default()
    });
    assert!(matches(&r, &with_do, PEER) && !matches(&r, &without_do, PEER));
    assert!(!matches(&r, &plain, PEER));
    for (m, want) in [
        (EdnsMatch::Absent, [true, false, false]),
        (EdnsMatch::Present, [false, true, true]),
        (EdnsMatch::Version(1), [false, false, true]),
    ] {
        let r = one(SelectorSpec {
            edns: Some(m),
            ..Default::default()
        });
        let got = [&plain, &without_do, &v1].map(|q| matches(&r, q, PEER));
        assert_eq!(got, want, "{m:?}");
    }
    let r = one(SelectorSpec {
        query_size: Some((0, 20)),
        ..Default::default()
    });
    assert!(matches(&r, &a("x."), PEER), "{} bytes", a("x.").len());
    assert!(!matches(&r, &a("longer.example."), PEER));
    let r = one(SelectorSpec {
        transport: Some(TransportMatch::Tcp),
        ..Default::default()
    });
    let tcp = Peer {
        transport: Transport::Tcp,
        ..PEER
    };
    assert!(matches(&r, &plain, tcp));
    assert!(!matches(&r, &plain, PEER));
    assert!(!matches(
        &r,
        &plain,
        Peer {
            transport: Transport::Xsk,
            ..PEER
        }
    ));
}

#[test]
fn not_order_and_default() {
    let refused_unless_a = RuleSpec {
        not: Some(SelectorSpec {
            qtypes: vec![1],
            ..Default::default()
        }),
        ..RuleSpec::new(
            SelectorSpec {
                source: vec!["198.51.100.0/24".parse().unwrap()],
                ..Default::default()
            },
            Action::Refused,
        )
    };
    let not_a_name = RuleSpec {
        not: Some(suffix("ok.test.")),
        ..RuleSpec::new(suffix("test."), Action::NxDomain)
    };
    let r = rules_of(vec![
        refused_unless_a,
        not_a_name,
        RuleSpec::new(suffix("test."), Action::Drop),
    ]);
    let c = from("198.51.100.9");
    assert_eq!(rule_for(&r, &query(1, "x.", 28, None), c), 0);
    assert_eq!(
        rule_for(&r, &a("x."), c),
        3,
        "not {{ qtype = A }}: the default"
    );
    assert_eq!(rule_for(&r, &a("bad.test."), PEER), 1);
    assert_eq!(
        rule_for(&r, &a("a.ok.test."), PEER),
        2,
        "not holds: next rule"
    );
    assert_eq!(rule_for(&r, &a("a.ok.test."), c), 2, "first match in order");
    let empty = rules_of(vec![]);
    assert_eq!(
        empty.decide(&a("x."), &parse_query(&a("x.")).unwrap(), &facts(PEER, 0)),
        (0, Action::Refused)
    );
}

#[test]
fn many_rules_span_mask_words() {
    let list: Vec<RuleSpec> = (0..300)
        .map(|i| RuleSpec::new(suffix(&format!("r{i}.test.")), Action::Drop))
        .chain([RuleSpec::new(
            SelectorSpec {
                qtypes: vec![28],
                ..Default::default()
            },
            Action::Refused,
        )])
        .collect();
    let r = rules_of(list);
    assert_eq!(rule_for(&r, &a("x.r0.test."), PEER), 0);
    assert_eq!(rule_for(&r, &a("x.r199.test."), PEER), 199);
    assert_eq!(rule_for(&r, &query(1, "x.", 28, None), PEER), 300);
    assert_eq!(rule_for(&r, &a("x."), PEER), 301);
}

#[test]
fn the_production_rule_set_and_its_blocklist() {
    let spec = crate::testing::production_rules(Action::Refused);
    let r = Rules::new(&spec, &[]);
    assert_eq!(r.slots(), 101);
    assert_eq!(rule_for(&r, &a("spoof.example."), PEER), 99);
    assert_eq!(
        rule_for(&r, &a("www.example.com."), PEER),
        100,
        "nothing matches"
    );
    assert_eq!(rule_for(&r, &a("ads1.tracker1.example."), PEER), 0);
    assert_eq!(
        rule_for(&r, &a("sub.ads1.tracker1.example."), PEER),
        0,
        "a suffix entry"
    );
    assert_eq!(
        rule_for(&r, &a("sub.ads0.tracker0.example."), PEER),
        100,
        "an exact entry"
    );
    assert_eq!(rule_for(&r, &a("ads99999.tracker89.example."), PEER), 0);
    assert_eq!(rule_for(&r, &a("a.zone10.example."), PEER), 10);
}

fn pipeline(rule: RuleSpec) -> Pipeline {
    let mut spec = answer_spec(0, Action::Refused);
    spec.rules = vec![rule];
    Pipeline::new(&spec, None)
}

fn answer(p: &mut Pipeline, msg: &[u8], peer: Peer) -> Vec<u8> {
    let mut buf = msg.to_vec();
    buf.resize(4096, 0);
    match p.decide(&mut buf, msg.len(), peer, &mut DataplaneCounters::new()) {
        Verdict::Answer(n) => buf[..n].to_vec(),
        other => panic!("{other:?}"),
    }
}

/// (ANCOUNT, NSCOUNT, ARCOUNT)
fn counts(m: &[u8]) -> (u16, u16, u16) {
    let c = |at: usize| u16::from_be_bytes([m[at], m[at + 1]]);
    (c(6), c(8), c(10))
}

fn spoof(records: &[(u16, &[u8])]) -> RuleSpec {
    RuleSpec {
        answers: records
            .iter()
            .map(|(t, d)| SpoofRecord {
                rtype: *t,
                ttl: 60,
                rdata: d.to_vec(),
            })
            .collect(),
        aa: true,
        ..RuleSpec::new(suffix("spoof.test."), Action::Spoof)
    }
}

#[test]
fn spoofed_answers_by_type() {
    let mut p = pipeline(spoof(&[
        (1, &[192, 0, 2, 99]),
        (
            28,
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99],
        ),
    ]));
    let m = answer(
        &mut p,
        &query(7, "spoof.test.", 1, Some((1232, 0, false))),
        PEER,
    );
    assert_eq!(counts(&m), (1, 0, 1));
    assert_eq!(m[3] & 0xf, 0);
    assert_eq!(m[2] & 0x04, 0x04, "AA");
    let q_end = 12 + 12 + 4;
    assert_eq!(
        &m[q_end..q_end + 2],
        &[0xc0, 12],
        "owner: the question's name"
    );
    assert_eq!(&m[q_end + 2..q_end + 4], &[0, 1]);
    assert_eq!(&m[q_end + 6..q_end + 10], &60u32.to_be_bytes());
    assert_eq!(&m[q_end + 12..q_end + 16], &[192, 0, 2, 99]);
    assert_eq!(m.len(), q_end + 16 + 11, "then our OPT");
    let m = answer(&mut p, &query(7, "spoof.test.", 28, None), PEER);
    assert_eq!(counts(&m), (1, 0, 0));
    let m = answer(&mut p, &query(7, "spoof.test.", 255, None), PEER);
    assert_eq!(counts(&m).0, 2, "ANY: all of them");
    let m = answer(&mut p, &query(7, "spoof.test.", 16, None), PEER);
    assert_eq!((counts(&m), m[3] & 0xf), ((0, 0, 0), 0), "TXT: NODATA");
    let mut ch = query(7, "spoof.test.", 1, None);
    let n = ch.len();
    ch[n - 1] = 3;
    assert_eq!(
        counts(&answer(&mut p, &ch, PEER)).0,
        0,
        "IN records for IN only"
    );
    let mut p = pipeline(spoof(&[(5, b"\x06target\x04test\0")]));
    let m = answer(&mut p, &query(7, "spoof.test.", 28, None), PEER);
    assert_eq!(counts(&m).0, 1, "a CNAME answers every type");
}

#[test]
fn spoofed_answers_too_large_for_the_client_are_truncated() {
    let txt: Vec<u8> = std::iter::once(255).chain([b'x'; 255]).collect();
    let records: Vec<(u16, &[u8])> = vec![(16, &txt[..]); 3];
    let mut p = pipeline(spoof(&records));
    let m = answer(&mut p, &query(7, "spoof.test.", 16, None), PEER);
    assert_eq!(
        (counts(&m).0, m[2] & 0x02),
        (0, 0x02),
        "512 bytes: TC, no records"
    );
    let m = answer(
        &mut p,
        &query(7, "spoof.test.", 16, Some((1232, 0, false))),
        PEER,
    );
    assert_eq!((counts(&m).0, m[2] & 0x02), (3, 0));
    let tcp = Peer {
        transport: Transport::Tcp,
        ..PEER
    };
    assert_eq!(
        counts(&answer(&mut p, &query(7, "spoof.test.", 16, None), tcp)).0,
        3
    );
}

#[test]
fn tc_over_udp_only() {
    let mut p = pipeline(RuleSpec {
        when: SelectorSpec {
            transport: Some(TransportMatch::Udp),
            ..suffix("tc.test.")
        },
        ..RuleSpec::new(SelectorSpec::default(), Action::Tc)
    });
    let m = answer(&mut p, &a("x.tc.test."), PEER);
    assert_eq!((m[2] & 0x02, m[3] & 0xf, counts(&m)), (0x02, 0, (0, 0, 0)));
    let tcp = Peer {
        transport: Transport::Tcp,
        ..PEER
    };
    let m = answer(&mut p, &a("x.tc.test."), tcp);
    assert_eq!(
        (m[2] & 0x02, m[3] & 0xf),
        (0, 5),
        "over TCP: the next rule (default)"
    );
}

#[test]
fn negative_answers_carry_the_soa_and_flags() {
    let soa = SoaSpec {
        owner: name_to_wire("gone.test.").unwrap(),
        ttl: 300,
        rdata: [
            name_to_wire("gone.test.").unwrap(),
            name_to_wire("hostmaster.gone.test.").unwrap(),
            [1u32, 3600, 600, 86400, 300]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect(),
        ]
        .concat(),
    };
    let mut p = pipeline(RuleSpec {
        soa: Some(soa.clone()),
        ra: true,
        ..RuleSpec::new(suffix("gone.test."), Action::NxDomain)
    });
    let q = query(7, "a.gone.test.", 1, None);
    let m = answer(&mut p, &q, PEER);
    assert_eq!(
        (m[3] & 0xf, m[3] & 0x80, m[2] & 0x04),
        (3, 0x80, 0),
        "NXDOMAIN, RA, not AA"
    );
    assert_eq!(counts(&m), (0, 1, 0));
    let at = q.len();
    assert_eq!(&m[at..at + soa.owner.len()], &soa.owner[..]);
    let o = at + soa.owner.len();
    assert_eq!(&m[o..o + 2], &[0, 6]);
    assert_eq!(&m[o + 4..o + 8], &300u32.to_be_bytes());
    assert_eq!(&m[o + 10..], &soa.rdata[..]);
    // NODATA with the SOA too.
    let mut p = pipeline(RuleSpec {
        soa: Some(soa),
        ..RuleSpec::new(suffix("gone.test."), Action::NoError)
    });
    let m = answer(&mut p, &q, PEER);
    assert_eq!((m[3] & 0xf, counts(&m)), (0, (0, 1, 0)));
}

#[test]
fn a_name_many_rules_select_is_judged_the_same() {
    // Twenty rules on one suffix (more hits than the fast path keeps), the
    // first eighteen excluded by their not tables.
    let list: Vec<RuleSpec> = (0..20)
        .map(|i| RuleSpec {
            not: (i < 18).then(|| suffix("many.test.")),
            ..RuleSpec::new(suffix("many.test."), Action::Drop)
        })
        .collect();
    let r = rules_of(list);
    assert_eq!(rule_for(&r, &a("x.many.test."), PEER), 18);
    assert_eq!(rule_for(&r, &a("x.other.test."), PEER), 20);
}

/// A rule judged the plain way: every selector of `s` holds for the
/// query (names compared label by label, case aside).
fn holds_plainly(s: &SelectorSpec, msg: &[u8], q: &Query, f: &Facts) -> bool {
    let qname: Vec<u8> = q.qname(msg).to_ascii_lowercase();
    let names_ok = s.names.is_empty()
        || s.names.iter().any(|e| {
            if e.exact {
                return qname == e.wire;
            }
            let mut at = 0;
            loop {
                if qname[at..] == e.wire[..] {
                    return true;
                }
                if qname[at] == 0 {
                    return false;
                }
                at += 1 + usize::from(qname[at]);
            }
        });
    names_ok && Selector::new(s).holds(q, f)
}

/// Random rule sets over small pools of values (so selectors collide,
/// ranges and prefixes overlap and nest) judged by the index and the
/// plain way agree on every query of a random set.
#[test]
fn the_index_agrees_with_judging_each_rule_in_turn() {
    let mut rand = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
    let names = [
        "example.com.",
        "www.example.com.",
        "com.",
        "b.example.org.",
        ".",
    ];
    let prefixes = [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.3/32",
        "192.0.2.0/24",
        "0.0.0.0/0",
        "2001:db8::/32",
        "2001:db8:1::/48",
        "::/0",
    ];
    let sources = [
        "10.1.2.3",
        "10.9.9.9",
        "192.0.2.7",
        "198.51.100.1",
        "2001:db8:1::5",
        "2001:db8:2::1",
        "fe80::1",
    ];
    let listens: [SocketAddr; 2] = [
        "192.0.2.1:53".parse().unwrap(),
        "[2001:db8::1]:53".parse().unwrap(),
    ];
    let qtypes = [1u16, 28, 16, 300, 1000];
    let sizes = [(0u16, 40u16), (30, 60), (50, 50), (61, 65535), (1000, 2000)];
    let edns = [
        EdnsMatch::Absent,
        EdnsMatch::Present,
        EdnsMatch::Version(0),
        EdnsMatch::Version(1),
    ];
    let pick = |rand: &mut dyn FnMut(u64) -> u64| {
        let mut s = SelectorSpec::default();
        for _ in 0..=rand(3) {
            match rand(11) {
                0 => s.names.push(NameEntry {
                    wire: name_to_wire(names[rand(5) as usize]).unwrap(),
                    exact: rand(2) == 0,
                }),
                1 => s.source.push(prefixes[rand(8) as usize].parse().unwrap()),
                2 => s.listen.push(listens[rand(2) as usize]),
                3 => s.qtypes.push(qtypes[rand(5) as usize]),
                4 => s.qclass = Some([1, 3][rand(2) as usize]),
                5 => s.opcode = Some([0, 5][rand(2) as usize]),
                6 => s.rd = Some(rand(2) == 0),
                7 => s.dnssec_ok = Some(rand(2) == 0),
                8 => s.edns = Some(edns[rand(4) as usize]),
                9 => s.query_size = Some(sizes[rand(5) as usize]),
                _ => {
                    s.transport = Some(if rand(2) == 0 {
                        TransportMatch::Tcp
                    } else {
                        TransportMatch::Udp
                    })
                }
            }
        }
        s
    };
    for round in 0..40 {
        // 1 to 150 rules: one, two and three mask words.
        let n = [1, 5, 40, 70, 150][round % 5];
        let list: Vec<RuleSpec> = (0..n)
            .map(|_| {
                let mut r = RuleSpec::new(pick(&mut rand), Action::Drop);
                if rand(4) == 0 {
                    r.not = Some(pick(&mut rand));
                }
                r
            })
            .collect();
        let rules = rules_of(list.clone());
        for _ in 0..300 {
            let name = [
                "www.example.com.",
                "x.www.example.com.",
                "EXAMPLE.com.",
                "a.b.example.org.",
                "org.",
                ".",
            ][rand(6) as usize];
            let e = match rand(4) {
                0 => None,
                v => Some((1232, (v - 1) as u8, rand(2) == 0)),
            };
            let msg = query(1, name, qtypes[rand(5) as usize], e);
            let mut q = parse_query(&msg).unwrap();
            q.qclass = [1, 3][rand(2) as usize];
            q.opcode = [0, 5, 2][rand(3) as usize];
            q.rd = rand(2) == 0;
            let f = Facts {
                ip: sources[rand(7) as usize].parse().unwrap(),
                local: listens[rand(2) as usize],
                tcp: rand(2) == 0,
                size: [12, 35, 50, 55, 61, 1500, 70_000][rand(7) as usize],
            };
            let plain = list
                .iter()
                .position(|r| {
                    holds_plainly(&r.when, &msg, &q, &f)
                        && !r
                            .not
                            .as_ref()
                            .is_some_and(|n| holds_plainly(n, &msg, &q, &f))
                })
                .unwrap_or(list.len());
            let got = rules.decide(&msg, &q, &f).0;
            assert_eq!(
                got,
                plain,
                "round {round}: {name} {q:?} {f:?}\nindex: {:?}\nplain: {:?}",
                list.get(got),
                list.get(plain)
            );
        }
    }
}
