//! Per-packet cost of the production pipeline, `Engine::frame` — what the
//! worker calls for every AF_XDP frame: parse the frame (Ethernet, IP, UDP,
//! checksums), parse the query, decide (rules, backend choice), and carry the
//! verdict out in place: a local answer with the headers turned round, or a
//! forwarded query re-addressed to its backend and the backend's reply
//! re-addressed to the client (through the in-flight table). The frame is
//! copied into the buffer each iteration (a few nanoseconds of the figure).
//! `pipeline/decide` is the same decision on a bare message, as the kernel
//! path and TCP run it.

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use xdpdns_common::stats::DataplaneCounters;
use xdpdns_dataplane::forward::Emit;
use xdpdns_dataplane::frame::Headers;
use xdpdns_dataplane::testing::{
    FrameSpec, PEER, build, forwarding_engine, local_engine, production_engine, query, turn_round,
    warm_cached_engine,
};
use xdpdns_dataplane::xsk::Fate;

struct NoEmit;

impl Emit for NoEmit {
    fn kernel(&mut self, _: std::net::SocketAddr, _: std::net::SocketAddr, _: &[u8]) -> bool {
        false
    }
    fn frame(&mut self, _: &Headers, _: &[u8]) -> bool {
        false
    }
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
    let mut counters = DataplaneCounters::new();
    let mut buf = vec![0u8; 2048 - 256];
    let mut g = c.benchmark_group("engine_frame");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in &cases {
        for rules in [0usize, 10] {
            let mut e = local_engine(rules);
            g.bench_function(format!("{name}/refused/{rules}-rules"), |b| {
                b.iter(|| {
                    buf[..frame.len()].copy_from_slice(frame);
                    black_box(e.frame(
                        black_box(&mut buf),
                        0,
                        frame.len(),
                        &mut counters,
                        &mut NoEmit,
                    ))
                })
            });
        }
    }
    // Forwarding: the query out (a slot in the in-flight table, the frame
    // re-addressed), and with `+reply` the backend's reply back to the
    // client (the slot claimed, the frame re-addressed again).
    let (_, frame) = &cases[1];
    let mut e = forwarding_engine(0);
    g.bench_function("ipv4+edns/forward", |b| {
        b.iter(|| {
            buf[..frame.len()].copy_from_slice(frame);
            black_box(e.frame(&mut buf, 0, frame.len(), &mut counters, &mut NoEmit))
        })
    });
    let mut e = forwarding_engine(0);
    let mut reply = vec![0u8; 2048 - 256];
    g.bench_function("ipv4+edns/forward+reply", |b| {
        b.iter(|| {
            buf[..frame.len()].copy_from_slice(frame);
            let Fate::Transmit { head, len } =
                e.frame(&mut buf, 0, frame.len(), &mut counters, &mut NoEmit)
            else {
                panic!("not forwarded")
            };
            let n = turn_round(&buf[head..head + len], &mut reply);
            let fate = e.frame(&mut reply, 0, n, &mut counters, &mut NoEmit);
            assert!(matches!(fate, Fate::Transmit { .. }), "reply not relayed");
            black_box(fate)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    let msg = query(1, "www.example.com.", 1, Some((1232, 0, true)));
    let mut e = local_engine(10);
    g.bench_function("decide/refused/10-rules", |b| {
        b.iter(|| {
            buf[..msg.len()].copy_from_slice(&msg);
            black_box(e.pipeline.decide(&mut buf, msg.len(), PEER, &mut counters))
        })
    });
    // Rules (#14): no rules against 100 mixed rules with a 100 k-name
    // blocklist, side by side; a blocked name; a spoofed answer.
    let mut none = local_engine(0);
    let mut production = production_engine();
    for (label, e) in [
        ("0-rules", &mut none),
        ("production-rules", &mut production),
    ] {
        g.bench_function(format!("decide/refused/{label}"), |b| {
            b.iter(|| {
                buf[..msg.len()].copy_from_slice(&msg);
                black_box(e.pipeline.decide(&mut buf, msg.len(), PEER, &mut counters))
            })
        });
    }
    for (label, name, qtype) in [
        ("blocked", "x.ads1.tracker1.example.", 1),
        ("spoof", "spoof.example.", 28),
    ] {
        let msg = query(1, name, qtype, Some((1232, 0, true)));
        g.bench_function(format!("decide/{label}/production-rules"), |b| {
            b.iter(|| {
                buf[..msg.len()].copy_from_slice(&msg);
                black_box(
                    production
                        .pipeline
                        .decide(&mut buf, msg.len(), PEER, &mut counters),
                )
            })
        });
    }
    // The packet cache (#13): a hit against a local REFUSED, both on the
    // production rules (100 rules, a 100 k-name blocklist), for the same
    // query (no OPT: a resolver's plain query; cookies bypass the cache).
    let plain = query(1, "www.example.com.", 1, None);
    let mut cached = warm_cached_engine(&plain);
    for (label, e) in [("refused", &mut production), ("cache-hit", &mut cached)] {
        g.bench_function(format!("decide/{label}/production-rules/plain"), |b| {
            b.iter(|| {
                buf[..plain.len()].copy_from_slice(&plain);
                black_box(
                    e.pipeline
                        .decide(&mut buf, plain.len(), PEER, &mut counters),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
