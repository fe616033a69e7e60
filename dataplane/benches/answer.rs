//! Per-packet cost of the answer path: parse the frame (Ethernet, IP, UDP,
//! checksums), parse the query, decide by the rules, write the answer and
//! rewrite the headers — all in place. The query is copied back into the
//! buffer each iteration (a few nanoseconds of the figure).

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use xdpdns_common::config::{Action, AnswerSpec, RuleSpec};
use xdpdns_common::dns::name_to_wire;
use xdpdns_dataplane::answer::Answerer;
use xdpdns_dataplane::testing::{FrameSpec, build, query};

fn answerer(rules: usize) -> Answerer {
    Answerer::new(&AnswerSpec {
        rules: (0..rules)
            .map(|i| RuleSpec {
                suffix: Some(name_to_wire(&format!("blocked{i}.example.")).unwrap()),
                qtype: None,
                action: Action::NxDomain,
            })
            .collect(),
        default: Action::Refused,
        edns_udp_size: 1232,
        verify_checksums: true,
    })
}

fn bench(c: &mut Criterion) {
    let cases = [
        (
            "ipv4",
            build(&FrameSpec::v4(), &query(1, "www.example.com.", 1, None)),
        ),
        (
            "ipv4+edns",
            build(
                &FrameSpec::v4(),
                &query(1, "www.example.com.", 1, Some((1232, 0, true))),
            ),
        ),
        (
            "ipv6",
            build(&FrameSpec::v6(), &query(1, "www.example.com.", 28, None)),
        ),
    ];
    let mut g = c.benchmark_group("answer_frame");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in &cases {
        for rules in [0usize, 10] {
            let mut a = answerer(rules);
            let mut buf = vec![0u8; 2048 - 256];
            g.bench_function(format!("{name}/refused/{rules}-rules"), |b| {
                b.iter(|| {
                    buf[..frame.len()].copy_from_slice(frame);
                    black_box(a.answer_frame(black_box(&mut buf), frame.len()).unwrap())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
