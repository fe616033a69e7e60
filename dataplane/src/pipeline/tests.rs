use super::*;
use crate::dns::testing::query;
use crate::testing::PEER;
use xdpdns_common::config::RuleSpec;
use xdpdns_common::ipc::BackendLive;

fn answer_spec(rules: Vec<RuleSpec>, default: Action) -> AnswerSpec {
    AnswerSpec {
        rules,
        default,
        edns_udp_size: 1232,
        acl: crate::testing::open_acl(),
        tally: None,
        min_ttl: 0,
        max_ttl: 0,
    }
}

fn drop_rule() -> RuleSpec {
    RuleSpec::new(crate::testing::suffix("dropme.test."), Action::Drop)
}

fn forward_spec(backends: usize) -> ForwardSpec {
    crate::testing::forward_spec(backends)
}

fn decide(p: &mut Pipeline, msg: &[u8], room: usize) -> (Verdict, Vec<u8>) {
    let mut buf = msg.to_vec();
    buf.resize(msg.len() + room, 0);
    let v = p.decide(&mut buf, msg.len(), PEER, &mut DataplaneCounters::new());
    (v, buf)
}

fn rcode(msg: &[u8]) -> u8 {
    msg[3] & 0x0f
}

#[test]
fn bare_messages_are_answered_in_place() {
    let mut p = Pipeline::new(&answer_spec(vec![], Action::Refused), None);
    let q = query(0x1234, "example.", 1, Some((1232, 0, false)));
    let (v, buf) = decide(&mut p, &q, 512);
    assert_eq!(v, Verdict::Answer(12 + 9 + 4 + 11));
    assert_eq!(rcode(&buf), 5);
}

#[test]
fn rule_hits_are_counted_per_rule_and_default() {
    let mut p = Pipeline::new(&answer_spec(vec![drop_rule()], Action::Refused), None);
    for name in ["a.dropme.test.", "b.dropme.test.", "other.example."] {
        decide(&mut p, &query(1, name, 1, None), 0);
    }
    assert_eq!(p.rule_hits(), &[2, 1]);
    let (v, _) = decide(&mut p, &query(1, "x.dropme.test.", 1, None), 0);
    assert_eq!(v, Verdict::Drop(DropReason::RuleDrop));
}

#[test]
fn a_reconfiguration_keeps_the_hits_of_each_rule_kept() {
    let mut p = Pipeline::new(&answer_spec(vec![drop_rule()], Action::Refused), None);
    decide(&mut p, &query(1, "a.dropme.test.", 1, None), 0);
    let mut spec = answer_spec(vec![drop_rule()], Action::Refused);
    spec.edns_udp_size = 4096;
    assert_eq!(
        Pipeline::reconfigured(&p, &spec, None).rule_hits(),
        &[1, 0],
        "same rules, other EDNS size"
    );
    spec.rules[0].action = Action::NxDomain;
    assert_eq!(
        Pipeline::reconfigured(&p, &spec, None).rule_hits(),
        &[0, 0],
        "a changed rule starts from zero"
    );
    // A rule added in front: the kept one keeps its hits at its new index.
    decide(&mut p, &query(1, "other.example.", 1, None), 0);
    let mut spec = answer_spec(vec![drop_rule()], Action::Refused);
    spec.rules.insert(
        0,
        RuleSpec::new(crate::testing::suffix("new.test."), Action::NxDomain),
    );
    assert_eq!(
        Pipeline::reconfigured(&p, &spec, None).rule_hits(),
        &[0, 1, 1]
    );
}

#[test]
fn answers_that_do_not_fit_are_dropped_not_written_past_the_buffer() {
    let mut p = Pipeline::new(&answer_spec(vec![], Action::Refused), None);
    let mut m = query(1, "example.", 1, None);
    m[11] = 1;
    m.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0]); // 9 bytes: rdlen missing
    // FORMERR with the question, the broken OPT not echoed: fits in place.
    assert_eq!(decide(&mut p, &m, 0).0, Verdict::Answer(12 + 9 + 4));
    m.extend_from_slice(&[0, 0]);
    // Exactly the OPT size: fits (11 bytes replace 11 bytes).
    assert!(matches!(decide(&mut p, &m, 0).0, Verdict::Answer(_)));
    let len = m.len();
    let mut short = m.clone();
    let v = p.decide(
        &mut short[..len - 1],
        len,
        PEER,
        &mut DataplaneCounters::new(),
    );
    assert_eq!(v, Verdict::Drop(DropReason::DnsTruncated));
}

#[test]
fn forwarding_picks_a_backend_and_a_dead_pool_gets_its_failure_action() {
    let spec = forward_spec(2);
    let mut p = Pipeline::new(&answer_spec(vec![], Action::Forward), Some(&spec));
    let q = query(7, "www.example.", 1, None);
    let picks: Vec<_> = (0..4)
        .map(|_| match decide(&mut p, &q, 0).0 {
            Verdict::Forward { backend, query, .. } => {
                assert_eq!(query.id, 7);
                backend
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(picks, [0, 1, 0, 1], "round robin over the default pool");

    let down = BackendLive {
        up: false,
        mac: None,
    };
    p.backends().unwrap().set_live(vec![down; 2]);
    let mut c = DataplaneCounters::new();
    let mut buf = query(7, "www.example.", 1, Some((4096, 0, true)));
    buf[2] |= 0x01; // RD
    buf[3] |= 0x10; // CD
    let len = buf.len();
    let v = p.decide(&mut buf, len, PEER, &mut c);
    let Verdict::Answer(n) = v else {
        panic!("{v:?}")
    };
    assert_eq!(c.forward.pool_down, 1);
    let a = &buf[..n];
    assert_eq!(rcode(a), 2, "SERVFAIL");
    assert_eq!(a[2] & 0x01, 1, "RD echoed");
    assert_eq!(a[3] & 0x10, 0x10, "CD echoed");
    assert_eq!(&a[10..12], &[0, 1], "with our OPT");
}

#[test]
fn a_forwarding_rule_without_backends_is_refused() {
    let mut p = Pipeline::new(&answer_spec(vec![], Action::Forward), None);
    let (v, buf) = decide(&mut p, &query(1, "a.", 1, None), 0);
    assert!(matches!(v, Verdict::Answer(_)), "{v:?}");
    assert_eq!(rcode(&buf), 5);
}

#[test]
fn failure_actions_answer_with_the_same_writer_or_drop() {
    let p = Pipeline::new(&answer_spec(vec![], Action::Refused), None);
    let mut buf = query(3, "x.example.", 28, Some((1232, 0, true)));
    let len = buf.len();
    buf.resize(200, 0);
    let q = crate::dns::parse_query(&buf[..len]).unwrap();
    let Verdict::Answer(n) = p.fail(&mut buf, &q, FailAction::Refused) else {
        panic!()
    };
    assert_eq!(rcode(&buf[..n]), 5);
    assert_eq!(buf[n - 11 + 7], 0x80, "DO copied into our OPT");
    assert_eq!(
        p.fail(&mut buf, &q, FailAction::Drop),
        Verdict::Drop(DropReason::FailDrop)
    );
}

#[test]
fn answers_without_the_query_echo_its_flags_and_edns() {
    let q = query(0xabcd, "late.example.", 16, None);
    let mut out = [0u8; 300];
    let original = dns::Original {
        id: 0x4321,
        flags: 0x0110, // RD, CD
        question: &q[12..],
        edns: Some(dns::Edns {
            udp_size: 0,
            version: 0,
            dnssec_ok: true,
        }),
    };
    let n = dns::write_answer_for(&mut out, &original, Rcode::ServFail, 1232).unwrap();
    let a = &out[..n];
    assert_eq!(&a[..2], &[0x43, 0x21]);
    assert_eq!(a[2], 0x81, "QR, RD");
    assert_eq!(a[3], 0x12, "CD, SERVFAIL");
    assert_eq!(&a[12..12 + q.len() - 12], &q[12..], "question as asked");
    assert_eq!(&a[4..12], &[0, 1, 0, 0, 0, 0, 0, 1]);
    assert_eq!(a[n - 11 + 7], 0x80, "DO");
    let short = dns::Original {
        question: &q[12..14],
        ..original
    };
    assert!(dns::write_answer_for(&mut out, &short, Rcode::ServFail, 1232).is_err());
}

#[test]
fn the_acl_judges_kernel_path_and_tcp_clients_but_not_frames() {
    let mut spec = answer_spec(vec![], Action::Refused);
    spec.acl = xdpdns_common::config::Acl {
        allow: vec!["10.0.0.0/8".parse().unwrap()],
        action: xdpdns_common::config::AclAction::Drop,
    };
    let mut p = Pipeline::new(&spec, None);
    let q = query(1, "a.example.", 1, None);
    let outside = |transport| Peer {
        ip: "198.51.100.1".parse().unwrap(),
        transport,
        local: PEER.local,
    };
    let run = |p: &mut Pipeline, peer| {
        let mut buf = q.clone();
        p.decide(&mut buf, q.len(), peer, &mut DataplaneCounters::new())
    };
    assert!(matches!(run(&mut p, PEER), Verdict::Answer(_)), "inside");
    assert_eq!(
        run(&mut p, outside(Transport::Udp)),
        Verdict::Drop(DropReason::AclDenied)
    );
    assert_eq!(
        run(&mut p, outside(Transport::Tcp)),
        Verdict::Drop(DropReason::AclDenied)
    );
    assert!(
        matches!(run(&mut p, outside(Transport::Xsk)), Verdict::Answer(_)),
        "frames were judged in XDP"
    );
    spec.acl.action = xdpdns_common::config::AclAction::Refused;
    let mut p = Pipeline::new(&spec, None);
    let mut buf = query(1, "a.example.", 1, None);
    let len = buf.len();
    let mut c = DataplaneCounters::new();
    let v = p.decide(&mut buf, len, outside(Transport::Udp), &mut c);
    assert!(matches!(v, Verdict::Answer(_)));
    assert_eq!(rcode(&buf), 5, "REFUSED");
    assert_eq!(c.acl_refused, 1);
    assert_eq!(p.rule_hits(), &[0], "not counted as a rule's");
}

#[test]
fn with_backends_every_opcode_and_a_cookie_only_query_is_forwarded() {
    let spec = forward_spec(1);
    let mut p = Pipeline::new(&answer_spec(vec![], Action::Forward), Some(&spec));
    for opcode in [1u8, 2, 4, 5, 6, 15] {
        let mut q = query(9, "example.", 6, None);
        q[2] = opcode << 3;
        assert!(
            matches!(decide(&mut p, &q, 0).0, Verdict::Forward { .. }),
            "opcode {opcode}"
        );
    }
    // RFC 7873 §5.4: QDCOUNT 0 with a COOKIE goes to the backend, whose
    // cookie it is; without one it is FORMERR here.
    let mut q = query(10, "example.", 1, None)[..12].to_vec();
    q[5] = 0;
    q[11] = 1;
    q.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 12, 0, 10, 0, 8]);
    q.extend_from_slice(b"cookie!!");
    match decide(&mut p, &q, 0).0 {
        Verdict::Forward { query, .. } => {
            assert_eq!((query.qdcount, query.question_end), (0, 12));
            assert!(query.cookie);
        }
        other => panic!("{other:?}"),
    }
    let mut bare = q[..12].to_vec();
    bare[11] = 0;
    let mut c = DataplaneCounters::new();
    let mut buf = bare.clone();
    buf.resize(64, 0);
    let v = p.decide(&mut buf, bare.len(), PEER, &mut c);
    assert_eq!(v, Verdict::Answer(12));
    assert_eq!(rcode(&buf), 1);
    assert_eq!(c.error_answers_for(DropReason::DnsQdcount), 1);

    // Without backends the cookie-only query is FORMERR, with our OPT.
    let mut local = Pipeline::new(&answer_spec(vec![], Action::Refused), None);
    let (v, buf) = decide(&mut local, &q, 64);
    assert_eq!(v, Verdict::Answer(12 + 11));
    assert_eq!(rcode(&buf), 1);
    assert_eq!(&buf[4..12], &[0, 0, 0, 0, 0, 0, 0, 1]);
}

#[test]
fn rules_match_opcodes() {
    let notify_refused = RuleSpec::new(
        xdpdns_common::config::SelectorSpec {
            opcode: Some(4),
            ..Default::default()
        },
        Action::Refused,
    );
    let spec = forward_spec(1);
    let mut p = Pipeline::new(
        &answer_spec(vec![notify_refused], Action::Forward),
        Some(&spec),
    );
    let mut notify = query(11, "example.", 6, None);
    notify[2] = 4 << 3;
    let (v, buf) = decide(&mut p, &notify, 0);
    assert!(matches!(v, Verdict::Answer(_)), "{v:?}");
    assert_eq!(
        (rcode(&buf), buf[2] >> 3 & 0xf),
        (5, 4),
        "REFUSED, opcode echoed"
    );
    let mut update = notify.clone();
    update[2] = 5 << 3;
    assert!(matches!(
        decide(&mut p, &update, 0).0,
        Verdict::Forward { .. }
    ));
    let q = query(12, "example.", 1, None);
    assert!(matches!(decide(&mut p, &q, 0).0, Verdict::Forward { .. }));
    assert_eq!(p.rule_hits(), &[1, 2]);
}

#[test]
fn forwarding_rules_route_to_their_pool() {
    let mut spec = forward_spec(3);
    // "default" has backends 0 and 1; "b" has backend 2.
    spec.pools[0].members = vec![0, 1];
    spec.pools.push(xdpdns_common::ipc::PoolSpec {
        name: "b".into(),
        policy: spec.pools[0].policy,
        members: vec![2],
        cache: true,
    });
    let to_b = RuleSpec {
        pool: Some("b".into()),
        ..RuleSpec::new(crate::testing::suffix("b.test."), Action::Forward)
    };
    let mut p = Pipeline::new(&answer_spec(vec![to_b], Action::Forward), Some(&spec));
    let backend_of = |p: &mut Pipeline, name: &str| match decide(p, &query(1, name, 1, None), 0).0 {
        Verdict::Forward { backend, .. } => backend,
        other => panic!("{other:?}"),
    };
    for _ in 0..4 {
        assert_eq!(backend_of(&mut p, "www.b.test."), 2, "the rule's pool");
        assert_ne!(backend_of(&mut p, "www.a.test."), 2, "the default pool");
    }
    assert_eq!(p.rule_hits(), &[4, 4]);
}
