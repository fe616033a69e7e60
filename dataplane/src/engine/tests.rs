use super::*;
use crate::dns::testing::query;
use crate::frame::Headers;
use crate::frame::testing::{FrameSpec, build, receive};
use xdpdns_common::config::{Action, AnswerSpec, RuleSpec};

/// Answers nothing beside the frame in hand.
pub(crate) struct NoEmit;

impl Emit for NoEmit {
    fn kernel(&mut self, _: SocketAddr, _: SocketAddr, _: &[u8]) -> bool {
        false
    }
    fn frame(&mut self, _: &Headers, _: &[u8]) -> bool {
        false
    }
}

fn spec() -> AnswerSpec {
    AnswerSpec {
        rules: vec![RuleSpec::new(
            crate::testing::suffix("dropme.test."),
            Action::Drop,
        )],
        default: Action::Refused,
        edns_udp_size: 1232,
        acl: crate::testing::open_acl(),
        tally: None,
        min_ttl: 0,
        max_ttl: 0,
    }
}

fn engine() -> Engine {
    Engine::new(Pipeline::new(&spec(), None), None)
}

/// Runs a frame through `e` with `room` spare bytes after it: the reply, or
/// the drop reason counted.
fn run_with(e: &mut Engine, frame: &[u8], room: usize) -> Result<Vec<u8>, DropReason> {
    let mut buf = frame.to_vec();
    buf.resize(frame.len() + room, 0xee);
    let mut c = DataplaneCounters::new();
    match e.frame(&mut buf, 0, frame.len(), &mut c, &mut NoEmit) {
        Fate::Transmit { head, len } => Ok(buf[head..head + len].to_vec()),
        Fate::Recycle => {
            let counted: Vec<DropReason> = DropReason::ALL
                .iter()
                .copied()
                .filter(|r| c.xsk.dropped_for(*r) > 0)
                .collect();
            assert_eq!(counted.len(), 1, "exactly one drop counted: {counted:?}");
            assert_eq!(c.xsk.received, 1);
            Err(counted[0])
        }
    }
}

fn run(frame: &[u8], room: usize) -> Result<Vec<u8>, DropReason> {
    run_with(&mut engine(), frame, room)
}

/// Runs a frame through `e` as AF_XDP hands it over (the rest of a chunk
/// after it), counting into `c`: the frame sent on, or `None`.
fn pass(e: &mut Engine, c: &mut DataplaneCounters, frame: &[u8]) -> Option<Vec<u8>> {
    let mut buf = frame.to_vec();
    buf.resize(2048 - 256, 0);
    match e.frame(&mut buf, 0, frame.len(), c, &mut NoEmit) {
        Fate::Transmit { head, len } => Some(buf[head..head + len].to_vec()),
        Fate::Recycle => None,
    }
}

fn rcode(msg: &[u8]) -> u8 {
    msg[3] & 0x0f
}

#[test]
fn ipv4_query_gets_refused_with_valid_headers() {
    let spec = FrameSpec::v4();
    let q = query(0xbeef, "www.example.com.", 1, None);
    let raw = run(&build(&spec, &q), 0).unwrap();
    assert_eq!(&raw[18..22], &[0, 0, 0x40, 0], "IPv4 ID 0 with DF");
    let reply = receive(&raw);
    assert_eq!(reply.src, spec.dst);
    assert_eq!(reply.dst, spec.src);
    assert_eq!(reply.ttl, 64);
    let m = &reply.payload;
    assert_eq!(&m[0..2], &[0xbe, 0xef]);
    assert_eq!(m[2], 0x81, "QR and RD set, opcode 0");
    assert_eq!(rcode(m), 5);
    assert_eq!(&m[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&m[12..], &q[12..], "question kept");
}

#[test]
fn ipv6_query_gets_refused_with_udp_checksum() {
    let spec = FrameSpec::v6();
    let q = query(7, "example.", 28, None);
    let reply = receive(&run(&build(&spec, &q), 0).unwrap());
    assert_eq!(reply.src, spec.dst);
    assert_eq!(reply.dst, spec.src);
    assert_eq!(reply.ttl, 64);
    assert_eq!(rcode(&reply.payload), 5);
}

#[test]
fn vlan_tag_is_kept() {
    for mut spec in [FrameSpec::v4(), FrameSpec::v6()] {
        spec.vlan = Some(0x2064);
        let q = query(9, "a.", 1, None);
        let reply = receive(&run(&build(&spec, &q), 0).unwrap());
        assert_eq!(reply.vlan, Some(0x2064));
        assert_eq!(rcode(&reply.payload), 5);
    }
}

#[test]
fn ipv4_zero_udp_checksum_is_accepted_and_answer_has_one() {
    let mut spec = FrameSpec::v4();
    spec.zero_udp_checksum = true;
    let reply = receive(&run(&build(&spec, &query(1, "a.", 1, None)), 0).unwrap());
    assert_eq!(rcode(&reply.payload), 5);
}

#[test]
fn edns_is_answered_with_our_opt() {
    let q = query(3, "example.", 1, Some((4096, 0, true)));
    let reply = receive(&run(&build(&FrameSpec::v4(), &q), 0).unwrap());
    let m = &reply.payload;
    assert_eq!(&m[10..12], &[0, 1], "ARCOUNT 1");
    let qend = 12 + 9 + 4;
    let opt = &m[qend..];
    assert_eq!(opt.len(), 11, "our OPT only, client options not echoed");
    assert_eq!(opt[0], 0);
    assert_eq!(&opt[1..3], &[0, 41]);
    assert_eq!(u16::from_be_bytes([opt[3], opt[4]]), 1232);
    assert_eq!(&opt[5..7], &[0, 0], "ext rcode 0, version 0");
    assert_eq!(opt[7], 0x80, "DO copied");
    assert_eq!(&opt[9..11], &[0, 0]);
    assert_eq!(rcode(m), 5);
}

#[test]
fn unknown_edns_version_gets_badvers() {
    let q = query(3, "example.", 1, Some((1232, 1, false)));
    let reply = receive(&run(&build(&FrameSpec::v6(), &q), 0).unwrap());
    let m = &reply.payload;
    assert_eq!(rcode(m), 0);
    assert_eq!(m[12 + 9 + 4 + 5], 1, "extended rcode 1 => BADVERS (16)");
    assert_eq!(m[12 + 9 + 4 + 6], 0, "we speak version 0");
}

#[test]
fn other_opcodes_get_notimp() {
    let mut q = query(3, "example.", 6, None);
    q[2] |= 4 << 3; // NOTIFY
    let reply = receive(&run(&build(&FrameSpec::v4(), &q), 0).unwrap());
    assert_eq!(rcode(&reply.payload), 4);
    assert_eq!((reply.payload[2] >> 3) & 0xf, 4, "opcode echoed");
}

#[test]
fn rule_drop_sends_nothing() {
    let q = query(3, "x.dropme.test.", 1, None);
    assert_eq!(
        run(&build(&FrameSpec::v4(), &q), 0),
        Err(DropReason::RuleDrop)
    );
}

fn expect_drop(frame: &[u8], reason: DropReason) {
    assert_eq!(run(frame, 64), Err(reason), "{frame:02x?}");
}

fn reframe_v4(frame: &mut [u8]) {
    // Recompute the IPv4 header checksum after a deliberate edit.
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = crate::frame::testing::reference_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn hostile_frames_are_counted_drops() {
    let good = build(&FrameSpec::v4(), &query(1, "example.", 1, None));

    let mut f = good.clone();
    f[14] = 0x46; // IHL 6: options
    expect_drop(&f, DropReason::IpOptions);

    let mut f = good.clone();
    f[14] = 0x44;
    expect_drop(&f, DropReason::BadIpHeader);

    let mut f = good.clone();
    f[20] = 0x20; // MF
    reframe_v4(&mut f);
    expect_drop(&f, DropReason::Fragment);

    let mut f = good.clone();
    f[21] = 1; // fragment offset
    reframe_v4(&mut f);
    expect_drop(&f, DropReason::Fragment);

    let mut f = good.clone();
    let past = (f.len() - 14 + 1) as u16;
    f[16..18].copy_from_slice(&past.to_be_bytes()); // total length past the frame
    reframe_v4(&mut f);
    expect_drop(&f, DropReason::BadIpHeader);

    let mut f = good.clone();
    f[24] ^= 0xff; // header checksum
    expect_drop(&f, DropReason::BadIpHeader);

    let mut f = good.clone();
    f[23] = 6; // TCP
    reframe_v4(&mut f);
    expect_drop(&f, DropReason::NotUdp);

    let mut f = good.clone();
    f[38..40].copy_from_slice(&200u16.to_be_bytes()); // UDP length
    expect_drop(&f, DropReason::BadUdpLength);

    let mut f = good.clone();
    f[6] = 0x01; // multicast source MAC
    expect_drop(&f, DropReason::BadSource);

    let mut f = good.clone();
    f[26] = 224; // multicast source IP
    reframe_v4(&mut f);
    expect_drop(&f, DropReason::BadSource);

    let mut spec = FrameSpec::v4();
    spec.src.set_port(0);
    expect_drop(
        &build(&spec, &query(1, "a.", 1, None)),
        DropReason::BadSource,
    );

    let mut f = good.clone();
    f[12..14].copy_from_slice(&[0x08, 0x06]); // ARP
    expect_drop(&f, DropReason::NotUdp);

    let mut spec6 = FrameSpec::v6();
    spec6.zero_udp_checksum = true;
    expect_drop(
        &build(&spec6, &query(1, "a.", 1, None)),
        DropReason::BadChecksum,
    );

    let mut f = build(&FrameSpec::v6(), &query(1, "a.", 1, None));
    f[20] = 0; // hop-by-hop options
    expect_drop(&f, DropReason::IpOptions);
}

fn expect_dns_drop(msg: &[u8], reason: DropReason) {
    expect_drop(&build(&FrameSpec::v4(), msg), reason);
}

/// `msg` is answered `rcode` for `reason` (counted), header-only or with
/// its question, never with an OPT record (nothing after a malformed part
/// is trusted).
fn expect_error_answer(msg: &[u8], reason: DropReason, rcode_want: u8, with_question: bool) {
    let frame = build(&FrameSpec::v4(), msg);
    let mut buf = frame.clone();
    buf.resize(frame.len() + 64, 0xee);
    let mut c = DataplaneCounters::new();
    let fate = engine().frame(&mut buf, 0, frame.len(), &mut c, &mut NoEmit);
    let Fate::Transmit { head, len } = fate else {
        panic!("{reason:?}: not answered");
    };
    let m = receive(&buf[head..head + len]).payload;
    assert_eq!(&m[0..2], &msg[0..2], "{reason:?}: ID kept");
    assert_eq!(m[2] & 0x80, 0x80, "{reason:?}: QR");
    assert_eq!(m[2] & 0x78, msg[2] & 0x78, "{reason:?}: opcode kept");
    assert_eq!(rcode(&m), rcode_want, "{reason:?}");
    assert_eq!(c.error_answers_for(reason), 1, "{reason:?} counted");
    let qd = u8::from(with_question);
    assert_eq!(&m[4..12], &[0, qd, 0, 0, 0, 0, 0, 0], "{reason:?}: counts");
    if with_question {
        let qlen = m.len() - 12;
        assert_eq!(&m[12..], &msg[12..12 + qlen], "{reason:?}: question kept");
    } else {
        assert_eq!(m.len(), 12, "{reason:?}: header only");
    }
}

const FORMERR: u8 = 1;
const NOTIMP: u8 = 4;

#[test]
fn hostile_dns_is_dropped_or_answered_formerr() {
    expect_dns_drop(&[0; 11], DropReason::DnsShort);
    let q = query(1, "example.", 1, None);

    let mut m = q.clone();
    m[2] |= 0x80;
    expect_dns_drop(&m, DropReason::DnsResponse);

    // No question (RFC 9619 and RFC 1035: FORMERR), two questions.
    let mut m = q[..12].to_vec();
    m[5] = 0;
    expect_error_answer(&m, DropReason::DnsQdcount, FORMERR, false);
    let mut m = q.clone();
    m[5] = 2;
    m.extend_from_slice(&q[12..]);
    expect_error_answer(&m, DropReason::DnsQdcount, FORMERR, false);

    // A compression pointer to itself in the question: refused, never followed.
    let mut m = q[..12].to_vec();
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    expect_error_answer(&m, DropReason::DnsBadQname, FORMERR, false);

    // Label type 0x40 (extended), reserved.
    let mut m = q[..12].to_vec();
    m.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
    expect_error_answer(&m, DropReason::DnsBadQname, FORMERR, false);

    // A name over 255 bytes.
    let mut m = q[..12].to_vec();
    for _ in 0..5 {
        m.push(63);
        m.extend_from_slice(&[b'a'; 63]);
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    expect_error_answer(&m, DropReason::DnsBadQname, FORMERR, false);

    // Label running past the end.
    let mut m = q[..12].to_vec();
    m.extend_from_slice(&[10, b'a']);
    expect_error_answer(&m, DropReason::DnsTruncated, FORMERR, false);

    // Question without type/class.
    let mut m = q[..12].to_vec();
    m.extend_from_slice(&[0, 0, 1]);
    expect_error_answer(&m, DropReason::DnsTruncated, FORMERR, false);

    // ARCOUNT claims 65535 records that are not there.
    let mut m = q.clone();
    m[10..12].copy_from_slice(&[0xff, 0xff]);
    expect_error_answer(&m, DropReason::DnsTruncated, FORMERR, true);

    // An additional record whose owner is a pointer loop: skipped, not followed.
    let mut m = q.clone();
    m[11] = 1;
    let here = m.len() as u16;
    m.extend_from_slice(&(0xc000 | here).to_be_bytes());
    m.extend_from_slice(&[0, 16, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert!(
        run(&build(&FrameSpec::v4(), &m), 0).is_ok(),
        "TXT in additional is ignored"
    );

    // OPT with a non-root owner; two OPTs; OPT in the answer section; an
    // option running past the OPT's data (RFC 6891 §6.1.1: FORMERR).
    let mut m = q.clone();
    m[11] = 1;
    m.extend_from_slice(&[1, b'x', 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
    expect_error_answer(&m, DropReason::DnsBadOpt, FORMERR, true);
    let mut m = q.clone();
    m[11] = 2;
    for _ in 0..2 {
        m.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
    }
    expect_error_answer(&m, DropReason::DnsBadOpt, FORMERR, true);
    let mut m = q.clone();
    m[7] = 1;
    m.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
    expect_error_answer(&m, DropReason::DnsBadOpt, FORMERR, true);
    let mut m = q.clone();
    m[11] = 1;
    m.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 4, 0, 10, 0, 8]);
    expect_error_answer(&m, DropReason::DnsBadOpt, FORMERR, true);

    // rdlength past the end.
    let mut m = q.clone();
    m[11] = 1;
    m.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 9]);
    expect_error_answer(&m, DropReason::DnsTruncated, FORMERR, true);

    // Bytes after the last record.
    let mut m = q.clone();
    m.extend_from_slice(b"garbage");
    expect_error_answer(&m, DropReason::DnsTrailing, FORMERR, true);
}

#[test]
fn opcodes_without_a_backend_get_notimp_also_header_only() {
    // RFC 8906 §8.1.6: opcode 15, no question, flags set.
    let mut m = query(7, "example.", 1, None)[..12].to_vec();
    m[2] = 0x79; // opcode 15, RD
    m[3] = 0x30; // AD, CD
    m[5] = 0;
    expect_error_answer(&m, DropReason::DnsOpcode, NOTIMP, false);
    // NOTIFY with its zone as the question.
    let mut m = query(8, "example.", 6, None);
    m[2] = 0x20;
    expect_error_answer(&m, DropReason::DnsOpcode, NOTIMP, true);
}

#[test]
fn every_truncation_of_valid_frames_is_rejected_without_panic() {
    for spec in [FrameSpec::v4(), FrameSpec::v6(), {
        let mut s = FrameSpec::v4();
        s.vlan = Some(5);
        s
    }] {
        let f = build(&spec, &query(1, "www.example.", 1, Some((1232, 0, false))));
        for cut in 0..f.len() {
            assert!(run(&f[..cut], 0).is_err(), "prefix of {cut} bytes");
        }
    }
}

#[test]
fn random_corruption_never_panics() {
    let base = [
        build(
            &FrameSpec::v4(),
            &query(1, "www.example.", 1, Some((1232, 0, false))),
        ),
        build(&FrameSpec::v6(), &query(2, "a.b.c.", 28, None)),
    ];
    let mut seed = 0x9e37_79b9u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut a = engine();
    let mut c = DataplaneCounters::new();
    for i in 0..50_000 {
        let mut f = base[i % 2].clone();
        for _ in 0..(1 + next() % 4) {
            let at = next() as usize % f.len();
            f[at] = next() as u8;
        }
        let len = f.len() - (next() as usize % 3).min(f.len());
        f.resize(f.len() + (next() as usize % 32), 0);
        let _ = a.frame(&mut f, 0, len, &mut c, &mut NoEmit);
        let mut m = f[42..].to_vec();
        let mlen = m.len().min(len.saturating_sub(42));
        let _ = a
            .pipeline
            .decide(&mut m, mlen, crate::testing::PEER, &mut c);
    }
}

#[test]
fn query_checksums_are_the_xdp_programs_but_headers_are_always_checked() {
    // XDP passes a query whose checksum does not verify to the kernel (or
    // nobody verifies, with xsk.verify_checksums off): one that arrives
    // here is answered, with a checksum of our own.
    let mut e = engine();
    let mut f = build(&FrameSpec::v4(), &query(1, "example.", 1, None));
    f[40] ^= 0x55;
    let reply = run_with(&mut e, &f, 0).expect("answered");
    assert_eq!(
        rcode(&receive(&reply).payload),
        5,
        "the reply's own checksum is computed"
    );
    f[24] ^= 0xff;
    assert_eq!(run_with(&mut e, &f, 0), Err(DropReason::BadIpHeader));
}

#[test]
fn backend_replies_must_verify_or_carry_an_offloaded_partial_checksum() {
    use crate::testing::{backend_reply, forwarding_engine};
    // Frames sit 256 bytes into their chunk, as AF_XDP delivers them: room
    // for longer headers toward a client of the other family.
    const HEAD: usize = 256;
    let run = |e: &mut Engine, c: &mut DataplaneCounters, f: &[u8]| {
        let mut buf = vec![0u8; 2048];
        buf[HEAD..HEAD + f.len()].copy_from_slice(f);
        match e.frame(&mut buf, HEAD, f.len(), c, &mut NoEmit) {
            Fate::Transmit { head, len } => Some(buf[head..head + len].to_vec()),
            Fate::Recycle => None,
        }
    };
    for family in [FrameSpec::v4(), FrameSpec::v6()] {
        let mut e = forwarding_engine(0);
        let mut c = DataplaneCounters::new();
        let forward = |e: &mut Engine, c: &mut DataplaneCounters, id: u16| {
            let client = build(&family, &query(id, "www.example.com.", 1, None));
            backend_reply(&run(e, c, &client).expect("forwarded"))
        };
        // A flipped payload bit: dropped, and the query stays in flight.
        let good = forward(&mut e, &mut c, 1);
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert_eq!(run(&mut e, &mut c, &bad), None);
        assert_eq!(c.xsk.dropped_for(DropReason::BadChecksum), 1);
        assert!(run(&mut e, &mut c, &good).is_some(), "{c:?}");
        // What a veth peer with TX offload sends: only the pseudo-header
        // sum (the backend of these tests is IPv4).
        let mut partial = forward(&mut e, &mut c, 2);
        let p = crate::frame::parse(&partial).unwrap();
        let mut sum = crate::frame::checksum::add(0, &partial[26..34]);
        sum += 17 + (partial.len() - 34) as u64;
        let folded = !crate::frame::checksum::finish(sum);
        partial[40..42].copy_from_slice(&folded.to_be_bytes());
        assert!(crate::frame::udp_checksum_ok(&partial, &p, true));
        assert!(!crate::frame::udp_checksum_ok(&partial, &p, false));
        assert!(
            run(&mut e, &mut c, &partial).is_some(),
            "a partial checksum is relayed: {c:?}"
        );
        assert_eq!(c.backends[0].replies, 2);
    }
}

#[test]
fn a_forwarded_query_and_its_reply_are_rewritten_in_place() {
    use crate::testing::{BACKEND, BACKEND_MAC, SOURCE, backend_reply, forwarding_engine};
    let mut e = forwarding_engine(0);
    let q = query(0xbeef, "www.example.com.", 1, Some((1232, 0, true)));
    let client = build(&FrameSpec::v4(), &q);
    let mut c = DataplaneCounters::new();

    let mut buf = client.clone();
    buf.resize(2048 - 256, 0);
    let Fate::Transmit { head, len } = e.frame(&mut buf, 0, client.len(), &mut c, &mut NoEmit)
    else {
        panic!("not forwarded: {c:?}")
    };
    let out = buf[head..head + len].to_vec();
    let fwd = crate::testing::receive_from(&out, crate::testing::SERVER_MAC, BACKEND_MAC);
    assert_eq!(fwd.dst, BACKEND.parse().unwrap());
    assert_eq!(fwd.src.ip().to_string(), SOURCE);
    assert!(
        (30000..31024).contains(&fwd.src.port()),
        "a forwarding port: {}",
        fwd.src.port()
    );
    assert_eq!(
        &fwd.payload[2..],
        &q[2..],
        "the query as the client sent it"
    );
    assert_eq!(c.backends[0].queries, 1);

    let reply = backend_reply(&out);
    let mut buf = reply.clone();
    buf.resize(2048 - 256, 0);
    let Fate::Transmit { head, len } = e.frame(&mut buf, 0, reply.len(), &mut c, &mut NoEmit)
    else {
        panic!("reply not relayed: {c:?}")
    };
    let back = receive(&buf[head..head + len]);
    let spec = FrameSpec::v4();
    assert_eq!((back.src, back.dst), (spec.dst, spec.src));
    assert_eq!(
        &back.payload[..2],
        &[0xbe, 0xef],
        "the client's ID restored"
    );
    assert_eq!(back.payload[2] & 0x80, 0x80);
    assert_eq!(c.backends[0].replies, 1);

    // The same reply again is a duplicate: claimed once only.
    let mut buf = reply.clone();
    assert_eq!(
        e.frame(&mut buf, 0, reply.len(), &mut c, &mut NoEmit),
        Fate::Recycle
    );
    assert_eq!(c.forward.duplicate_replies, 1);
}

/// Turns a query payload into an answer with one A record (TTL `ttl`),
/// its OPT record (if any) kept after it.
fn add_a_record(p: &mut Vec<u8>, ttl: u32) {
    let mut as_query = p.clone();
    as_query[2] &= !0x80;
    let q = crate::dns::parse_query(&as_query).unwrap();
    let tail = p.split_off(q.question_end);
    p[7] = 1;
    p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    p.extend_from_slice(&ttl.to_be_bytes());
    p.extend_from_slice(&[0, 4, 192, 0, 2, 33]);
    p.extend_from_slice(&tail);
}

/// A query as a resolver sends it: no cookie, with OPT if `edns` (its DO
/// bit), the name's letters in the case `case` gives them.
fn resolver_query(
    id: u16,
    name: &str,
    edns: Option<bool>,
    case: impl Fn(usize) -> bool,
) -> Vec<u8> {
    let mut m = query(id, name, 1, None);
    let end = crate::dns::parse_query(&m).unwrap().qname_end;
    for (i, b) in m[12..end].iter_mut().enumerate() {
        if b.is_ascii_lowercase() && case(i) {
            *b = b.to_ascii_uppercase();
        }
    }
    if let Some(dnssec_ok) = edns {
        m[11] = 1;
        m.extend_from_slice(&[
            0,
            0,
            41,
            0x04,
            0xd0,
            0,
            0,
            if dnssec_ok { 0x80 } else { 0 },
            0,
            0,
            0,
        ]);
    }
    m
}

#[test]
fn queries_with_a_cookie_bypass_the_cache() {
    use crate::testing::cached_forwarding_engine;
    let (mut e, _) = cached_forwarding_engine(0, None);
    let mut c = DataplaneCounters::new();
    let q = query(0x1111, "www.example.com.", 1, Some((1232, 0, false)));
    let f = build(&FrameSpec::v4(), &q);
    let mut buf = f.clone();
    buf.resize(2048 - 256, 0);
    e.frame(&mut buf, 0, f.len(), &mut c, &mut NoEmit);
    assert_eq!(
        (c.cache.bypassed, c.cache.misses, c.backends[0].queries),
        (1, 0, 1)
    );
}

#[test]
fn an_answer_relayed_once_is_served_from_the_cache_by_another_queue() {
    use crate::testing::{backend_reply_with, cached_forwarding_engine};
    let (mut e, cache) = cached_forwarding_engine(0, None);
    let mut c = DataplaneCounters::new();
    let q = resolver_query(0x1111, "www.example.com.", Some(false), |_| false);
    let first = build(&FrameSpec::v4(), &q);
    let Some(forwarded) = pass(&mut e, &mut c, &first) else {
        panic!("not forwarded: {c:?}")
    };
    assert_eq!((c.cache.misses, c.backends[0].queries), (1, 1));
    let reply = backend_reply_with(&forwarded, |p| add_a_record(p, 300));
    assert!(pass(&mut e, &mut c, &reply).is_some());
    assert_eq!(c.cache.inserts, 1, "{c:?}");

    // Another engine (another queue's dataplane) over the same cache: the
    // same name in another case, another ID, answered without a backend.
    let (mut other, _) = cached_forwarding_engine(0, Some(cache));
    let mut oc = DataplaneCounters::new();
    let q2 = resolver_query(0x2222, "www.example.com.", Some(false), |i| i % 2 == 0);
    assert_ne!(q2[12..29], q[12..29], "another case");
    let second = build(&FrameSpec::v4(), &q2);
    let mut buf = second.clone();
    buf.resize(2048 - 256, 0);
    let Fate::Transmit { head, len } = other.frame(&mut buf, 0, second.len(), &mut oc, &mut NoEmit)
    else {
        panic!("not answered: {oc:?}")
    };
    assert_eq!((oc.cache.hits, oc.backends.len()), (1, 0), "{oc:?}");
    let back = receive(&buf[head..head + len]);
    let spec = FrameSpec::v4();
    assert_eq!((back.src, back.dst), (spec.dst, spec.src));
    assert_eq!(&back.payload[..2], &[0x22, 0x22], "the asker's ID");
    assert_eq!(&back.payload[12..29], &q2[12..29], "the asker's case");
    assert_eq!(back.payload[7], 1, "the answer record");
    assert!(back.payload.windows(4).any(|w| w == [192, 0, 2, 33]));

    // DO set: another entry, so forwarded.
    let q3 = resolver_query(0x3333, "www.example.com.", Some(true), |_| false);
    let third = build(&FrameSpec::v4(), &q3);
    let mut buf = third.clone();
    buf.resize(2048 - 256, 0);
    other.frame(&mut buf, 0, third.len(), &mut oc, &mut NoEmit);
    assert_eq!((oc.cache.misses, oc.backends[0].queries), (1, 1));
}

#[test]
fn truncated_and_negative_answers_without_soa_are_not_cached() {
    use crate::testing::{backend_reply_with, cached_forwarding_engine};
    let (mut e, _) = cached_forwarding_engine(0, None);
    let mut c = DataplaneCounters::new();
    for (i, edit) in [
        |p: &mut Vec<u8>| {
            add_a_record(p, 60);
            p[2] |= 0x02;
        },
        |p: &mut Vec<u8>| p[3] = (p[3] & 0xf0) | 3,
        |p: &mut Vec<u8>| p[3] = (p[3] & 0xf0) | 5,
    ]
    .into_iter()
    .enumerate()
    {
        let q = query(0x100 + i as u16, "nc.example.com.", 1, None);
        let f = build(&FrameSpec::v4(), &q);
        let mut buf = f.clone();
        buf.resize(2048 - 256, 0);
        let Fate::Transmit { head, len } = e.frame(&mut buf, 0, f.len(), &mut c, &mut NoEmit)
        else {
            panic!("not forwarded: {c:?}")
        };
        let reply = backend_reply_with(&buf[head..head + len], edit);
        let mut buf = reply.clone();
        buf.resize(2048 - 256, 0);
        e.frame(&mut buf, 0, reply.len(), &mut c, &mut NoEmit);
    }
    assert_eq!((c.cache.inserts, c.cache.uncacheable), (0, 3), "{c:?}");
    assert_eq!(c.cache.misses, 3);
}

#[test]
fn sweeps_settle_each_answered_query_once_whether_they_read_its_slot_or_not() {
    use crate::testing::{backend_reply, forwarding_engine};
    let mut e = forwarding_engine(0);
    let mut c = DataplaneCounters::new();
    let mut forwarded = Vec::new();
    for id in 0..3u16 {
        let client = build(&FrameSpec::v4(), &query(id, "www.example.com.", 1, None));
        let Some(out) = pass(&mut e, &mut c, &client) else {
            panic!("not forwarded: {c:?}")
        };
        forwarded.push(out);
    }
    let sweep = |e: &mut Engine, c: &mut DataplaneCounters| {
        let Engine {
            pipeline,
            forwarder,
            ..
        } = e;
        let f = forwarder.as_mut().unwrap();
        f.sweep(pipeline.backends().unwrap(), c, 1232, &mut NoEmit);
        pipeline.backends().unwrap().outstanding(0)
    };
    let relay = |e: &mut Engine, c: &mut DataplaneCounters, fwd: &[u8]| {
        assert!(pass(e, c, &backend_reply(fwd)).is_some(), "relayed");
    };
    assert_eq!(e.pipeline.backends().unwrap().outstanding(0), 3);
    relay(&mut e, &mut c, &forwarded[0]);
    relay(&mut e, &mut c, &forwarded[1]);
    // The first sweep walks the whole region, the next ones only the slots
    // of queries in flight, and every 16th the whole region again: none
    // settles a query twice, or misses one.
    assert_eq!(sweep(&mut e, &mut c), 1, "two answered");
    relay(&mut e, &mut c, &forwarded[2]);
    assert_eq!(sweep(&mut e, &mut c), 0, "the third, by a partial sweep");
    for _ in 0..20 {
        assert_eq!(sweep(&mut e, &mut c), 0);
    }
    assert_eq!(c.backends[0].replies, 3);
    assert_eq!(c.backends[0].timeouts, 0);
}

/// Records the client IDs of the replies it is given frames for, with room
/// for `free` of them.
struct Frames {
    ids: Vec<u16>,
    free: usize,
}

impl Emit for Frames {
    fn kernel(&mut self, _: SocketAddr, _: SocketAddr, _: &[u8]) -> bool {
        false
    }
    fn frame(&mut self, _: &Headers, payload: &[u8]) -> bool {
        if self.free == 0 {
            return false;
        }
        self.free -= 1;
        self.ids.push(u16::from_be_bytes([payload[0], payload[1]]));
        true
    }
    fn frames_free(&self) -> usize {
        self.free
    }
}

/// One read of the backend's only socket: how many replies it relayed.
fn serve_once(e: &mut Engine, c: &mut DataplaneCounters, out: &mut Frames) -> usize {
    let clamp = e.pipeline.ttl_clamp();
    let f = e.forwarder.as_mut().expect("a forwarder");
    f.serve_socket(0, 0, clamp, c, out)
}

/// Forwards queries with IDs `ids` to the socket backend and has it answer
/// each (QR set, nothing else changed): the last reply and where it went.
fn answered_over_socket(
    e: &mut Engine,
    c: &mut DataplaneCounters,
    backend: &std::net::UdpSocket,
    ids: std::ops::Range<u16>,
) -> (Vec<u8>, SocketAddr) {
    let n = ids.len();
    for id in ids {
        let frame = build(&FrameSpec::v4(), &query(id, "www.example.com.", 1, None));
        assert_eq!(pass(e, c, &frame), None, "sent on the socket: {c:?}");
    }
    let mut got = [0u8; 512];
    let mut last = (Vec::new(), backend.local_addr().expect("address"));
    for _ in 0..n {
        let (len, from) = backend.recv_from(&mut got).expect("a forwarded query");
        got[2] |= 0x80;
        // Loopback delivers within the call: the reply waits on the socket.
        backend.send_to(&got[..len], from).expect("reply");
        last = (got[..len].to_vec(), from);
    }
    last
}

#[test]
fn replies_on_a_backend_socket_are_read_in_one_call_as_far_as_there_are_frames() {
    let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    backend
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut e = crate::testing::socket_forwarding_engine(backend.local_addr().unwrap(), 1);
    let mut c = DataplaneCounters::new();
    let mut out = Frames {
        ids: Vec::new(),
        free: usize::MAX,
    };
    answered_over_socket(&mut e, &mut c, &backend, 0x100..0x105);
    assert_eq!(c.backends[0].queries, 5);
    assert_eq!(serve_once(&mut e, &mut c, &mut out), 5, "all that wait");
    assert_eq!(serve_once(&mut e, &mut c, &mut out), 0);
    assert_eq!(out.ids, (0x100..0x105).collect::<Vec<u16>>(), "client IDs");
    assert_eq!(c.backends[0].replies, 5);

    // No more than there are frames for: the rest waits on the socket.
    let (reply, pool_socket) = answered_over_socket(&mut e, &mut c, &backend, 0x200..0x206);
    out.free = 2;
    assert_eq!(serve_once(&mut e, &mut c, &mut out), 2);
    assert_eq!(serve_once(&mut e, &mut c, &mut out), 0, "none free");
    out.free = 10;
    assert_eq!(serve_once(&mut e, &mut c, &mut out), 4);
    assert_eq!(out.ids[5..], (0x200..0x206).collect::<Vec<u16>>()[..]);
    assert_eq!(c.backends[0].replies, 11);

    // The same reply again, and a query from the backend: read, counted,
    // not relayed.
    backend.send_to(&reply, pool_socket).unwrap();
    let mut not_a_reply = reply.clone();
    not_a_reply[2] &= !0x80;
    backend.send_to(&not_a_reply, pool_socket).unwrap();
    assert_eq!(serve_once(&mut e, &mut c, &mut out), 2, "read");
    assert_eq!(out.ids.len(), 11, "not relayed");
    assert_eq!((c.forward.duplicate_replies, c.forward.bad_replies), (1, 1));
    assert_eq!(c.backends[0].replies, 11);
}

#[test]
fn steered_replies_are_matched_by_source_and_the_pool_port_they_were_sent_to() {
    let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    backend
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let (mut e, receiver) =
        crate::testing::steered_forwarding_engine(backend.local_addr().unwrap());
    let mut c = DataplaneCounters::new();
    let mut out = Frames {
        ids: Vec::new(),
        free: usize::MAX,
    };
    let serve = |e: &mut Engine, c: &mut DataplaneCounters, out: &mut Frames| {
        let clamp = e.pipeline.ttl_clamp();
        e.forwarder
            .as_mut()
            .expect("a forwarder")
            .serve_steered(0, clamp, c, out)
    };
    // Sent with sendto from the unconnected pool socket; the replies go to
    // the receiver (as the steering program would send them there).
    let mut replies = Vec::new();
    for id in 0x300..0x303u16 {
        let frame = build(&FrameSpec::v4(), &query(id, "www.example.com.", 1, None));
        assert_eq!(
            pass(&mut e, &mut c, &frame),
            None,
            "sent on the socket: {c:?}"
        );
        let mut got = [0u8; 512];
        let (len, from) = backend.recv_from(&mut got).expect("a forwarded query");
        assert_eq!(from.port(), receiver.port(), "from the pool socket's port");
        got[2] |= 0x80;
        replies.push(got[..len].to_vec());
    }
    for r in &replies {
        backend.send_to(r, receiver).unwrap();
    }
    assert_eq!(serve(&mut e, &mut c, &mut out), 3);
    assert_eq!(out.ids, vec![0x300, 0x301, 0x302], "client IDs");
    assert_eq!((c.backends[0].replies, c.forward.steered_replies), (3, 3));

    // From anyone but the backend: stray, however right the rest is.
    let frame = build(&FrameSpec::v4(), &query(0x304, "www.example.com.", 1, None));
    assert_eq!(pass(&mut e, &mut c, &frame), None);
    let mut got = [0u8; 512];
    let (len, _) = backend.recv_from(&mut got).unwrap();
    got[2] |= 0x80;
    let other = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
    other.send_to(&got[..len], receiver).unwrap();
    // From the backend with another ID: matches no query.
    let mut wrong_id = got[..len].to_vec();
    wrong_id[0] ^= 0x5a;
    backend.send_to(&wrong_id, receiver).unwrap();
    assert_eq!(serve(&mut e, &mut c, &mut out), 2, "read");
    assert_eq!(out.ids.len(), 3, "neither relayed");
    assert!(
        c.forward.stray_replies + c.forward.bad_replies >= 2,
        "{c:?}"
    );
    // The genuine reply still is.
    backend.send_to(&got[..len], receiver).unwrap();
    assert_eq!(serve(&mut e, &mut c, &mut out), 1);
    assert_eq!(out.ids[3], 0x304);
    assert_eq!(c.backends[0].replies, 4);
    assert_eq!(serve(&mut e, &mut c, &mut out), 0, "nothing left");
}
