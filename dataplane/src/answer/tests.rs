use super::*;
use crate::dns::testing::query;
use crate::frame::testing::{FrameSpec, build, receive};
use xdpdns_common::config::{Action, RuleSpec};

fn answerer() -> Answerer {
    Answerer::new(&AnswerSpec {
        rules: vec![RuleSpec {
            suffix: Some(xdpdns_common::dns::name_to_wire("dropme.test.").unwrap()),
            qtype: None,
            action: Action::Drop,
        }],
        default: Action::Refused,
        edns_udp_size: 1232,
        verify_checksums: true,
    })
}

/// Runs a frame through the answerer with `room` spare bytes after it.
fn run(frame: &[u8], room: usize) -> Result<Vec<u8>, DropReason> {
    let mut buf = frame.to_vec();
    buf.resize(frame.len() + room, 0xee);
    let n = answerer().answer_frame(&mut buf, frame.len())?;
    buf.truncate(n);
    Ok(buf)
}

fn rcode(msg: &[u8]) -> u8 {
    msg[3] & 0x0f
}

#[test]
fn ipv4_query_gets_refused_with_valid_headers() {
    let spec = FrameSpec::v4();
    let q = query(0xbeef, "www.example.com.", 1, None);
    let reply = receive(&run(&build(&spec, &q), 0).unwrap());
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

#[test]
fn rule_hits_are_counted_per_rule_and_default() {
    let mut a = answerer();
    for name in ["a.dropme.test.", "b.dropme.test.", "other.example."] {
        let f = build(&FrameSpec::v4(), &query(1, name, 1, None));
        let _ = a.answer_frame(&mut f.clone(), f.len());
    }
    assert_eq!(a.rule_hits(), &[2, 1]);
}

#[test]
fn a_reconfiguration_keeps_rule_hits_only_if_the_rules_stay() {
    let mut a = answerer();
    let f = build(&FrameSpec::v4(), &query(1, "a.dropme.test.", 1, None));
    let _ = a.answer_frame(&mut f.clone(), f.len());
    let mut spec = AnswerSpec {
        rules: vec![RuleSpec {
            suffix: Some(xdpdns_common::dns::name_to_wire("dropme.test.").unwrap()),
            qtype: None,
            action: Action::Drop,
        }],
        default: Action::Refused,
        edns_udp_size: 4096,
        verify_checksums: true,
    };
    assert_eq!(
        Answerer::replacing(&a, &spec).rule_hits(),
        &[1, 0],
        "same rules, other EDNS size"
    );
    spec.rules[0].action = Action::NxDomain;
    assert_eq!(Answerer::replacing(&a, &spec).rule_hits(), &[0, 0]);
}

#[test]
fn kernel_path_answers_bare_messages() {
    let q = query(0x1234, "example.", 1, Some((1232, 0, false)));
    let mut buf = q.clone();
    buf.resize(512, 0);
    let n = answerer().answer_message(&mut buf, q.len()).unwrap();
    assert_eq!(n, 12 + 9 + 4 + 11);
    assert_eq!(rcode(&buf[..n]), 5);
}

#[test]
fn answers_that_do_not_fit_are_dropped_not_written_past_the_buffer() {
    let q = query(1, "example.", 1, None);
    // A query whose OPT we must answer, in a buffer too short for our OPT.
    let mut m = q.clone();
    m[11] = 1;
    m.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0]); // 9 bytes: rdlen missing
    assert_eq!(
        answerer().answer_message(&mut m.clone(), m.len()),
        Err(DropReason::DnsTruncated)
    );
    m.extend_from_slice(&[0, 0]);
    let len = m.len();
    let mut short = m.clone();
    short.truncate(len);
    // Exactly the OPT size: fits (11 bytes replace 11 bytes).
    assert!(answerer().answer_message(&mut short, len).is_ok());
    assert_eq!(
        answerer().answer_message(&mut m[..len - 1].to_vec(), len),
        Err(DropReason::DnsTruncated)
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
    let last = f.len() - 1;
    f[last] ^= 0x01; // payload bit flip: checksum must catch it
    expect_drop(&f, DropReason::BadChecksum);

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

#[test]
fn hostile_dns_is_counted_drops() {
    expect_dns_drop(&[0; 11], DropReason::DnsShort);
    let q = query(1, "example.", 1, None);

    let mut m = q.clone();
    m[2] |= 0x80;
    expect_dns_drop(&m, DropReason::DnsResponse);

    let mut m = q.clone();
    m[5] = 0;
    expect_dns_drop(&m, DropReason::DnsQdcount);
    m[5] = 2;
    expect_dns_drop(&m, DropReason::DnsQdcount);

    // A compression pointer to itself in the question: refused, never followed.
    let mut m = q[..12].to_vec();
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    expect_dns_drop(&m, DropReason::DnsBadQname);

    // Label type 0x40 (extended), reserved.
    let mut m = q[..12].to_vec();
    m.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
    expect_dns_drop(&m, DropReason::DnsBadQname);

    // A name over 255 bytes.
    let mut m = q[..12].to_vec();
    for _ in 0..5 {
        m.push(63);
        m.extend_from_slice(&[b'a'; 63]);
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    expect_dns_drop(&m, DropReason::DnsBadQname);

    // Label running past the end.
    let mut m = q[..12].to_vec();
    m.extend_from_slice(&[10, b'a']);
    expect_dns_drop(&m, DropReason::DnsTruncated);

    // Question without type/class.
    let mut m = q[..12].to_vec();
    m.extend_from_slice(&[0, 0, 1]);
    expect_dns_drop(&m, DropReason::DnsTruncated);

    // ARCOUNT claims 65535 records that are not there.
    let mut m = q.clone();
    m[10..12].copy_from_slice(&[0xff, 0xff]);
    expect_dns_drop(&m, DropReason::DnsTruncated);

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

    // OPT with a non-root owner; two OPTs.
    let mut m = q.clone();
    m[11] = 1;
    m.extend_from_slice(&[1, b'x', 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
    expect_dns_drop(&m, DropReason::DnsBadOpt);
    let mut m = q.clone();
    m[11] = 2;
    for _ in 0..2 {
        m.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
    }
    expect_dns_drop(&m, DropReason::DnsBadOpt);

    // rdlength past the end.
    let mut m = q.clone();
    m[11] = 1;
    m.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 9]);
    expect_dns_drop(&m, DropReason::DnsTruncated);
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
    let mut a = answerer();
    for i in 0..50_000 {
        let mut f = base[i % 2].clone();
        for _ in 0..(1 + next() % 4) {
            let at = next() as usize % f.len();
            f[at] = next() as u8;
        }
        let len = f.len() - (next() as usize % 3).min(f.len());
        f.resize(f.len() + (next() as usize % 32), 0);
        let _ = a.answer_frame(&mut f, len);
        let mut m = f[42..].to_vec();
        let mlen = m.len().min(len.saturating_sub(42));
        let _ = a.answer_message(&mut m, mlen);
    }
}

#[test]
fn checksum_verification_can_be_turned_off_but_headers_are_still_checked() {
    let mut lax = Answerer::new(&AnswerSpec {
        rules: vec![],
        default: Action::Refused,
        edns_udp_size: 1232,
        verify_checksums: false,
    });
    let mut f = build(&FrameSpec::v4(), &query(1, "example.", 1, None));
    f[40] ^= 0x55; // UDP checksum, as a veth peer's partial checksum would look
    let n = lax.answer_frame(&mut f.clone(), f.len()).expect("answered");
    let mut buf = f.clone();
    let n2 = lax.answer_frame(&mut buf, f.len()).unwrap();
    assert_eq!(n, n2);
    buf.truncate(n2);
    assert_eq!(
        rcode(&receive(&buf).payload),
        5,
        "the reply's own checksum is computed"
    );
    f[24] ^= 0xff;
    assert_eq!(
        lax.answer_frame(&mut f.clone(), f.len()),
        Err(DropReason::BadIpHeader)
    );
}
