//! What the production rule set costs a query over no rules, measured
//! interleaved: rounds alternate the two engines (this VM's speed drifts
//! by 10–20 % between runs; alternating keeps both under the same drift),
//! and the median of the per-round differences is reported. The query is
//! answered REFUSED either way (no rule matches it), so the difference is
//! the rules' decision alone. Two query sets: one name (`www.example.com.`,
//! the criterion benches' query) and 256 names over many zones (what a
//! frontend sees), a quarter of them under `example.`, the top of the
//! blocklist's tree.

use std::hint::black_box;
use std::time::Instant;

use xdpdns_common::stats::DataplaneCounters;
use xdpdns_dataplane::engine::Engine;
use xdpdns_dataplane::testing::{PEER, local_engine, production_engine, query};

const ROUNDS: usize = 150;
const PER_ROUND: usize = 20_000;

fn round(e: &mut Engine, msgs: &[Vec<u8>], buf: &mut [u8], c: &mut DataplaneCounters) -> f64 {
    let t = Instant::now();
    for i in 0..PER_ROUND {
        let msg = &msgs[i % msgs.len()];
        buf[..msg.len()].copy_from_slice(msg);
        black_box(e.pipeline.decide(black_box(buf), msg.len(), PEER, c));
    }
    t.elapsed().as_nanos() as f64 / PER_ROUND as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let one = vec!["www.example.com.".to_string()];
    let tlds = ["com", "net", "org", "de"];
    let mixed: Vec<String> = (0..256)
        .map(|i| {
            if i % 4 == 0 {
                format!("q{i}.example.")
            } else {
                format!("host{i}.site{}.{}.", i % 64, tlds[i % 4])
            }
        })
        .collect();
    let mut buf = vec![0u8; 2048];
    let mut c = DataplaneCounters::new();
    println!("rules/production-over-none: ns per query, median of {ROUNDS} interleaved rounds");
    for (label, names) in [("www.example.com.", &one), ("256 names", &mixed)] {
        let msgs: Vec<Vec<u8>> = names
            .iter()
            .map(|n| query(1, n, 1, Some((1232, 0, true))))
            .collect();
        let mut none = local_engine(0);
        let mut production = production_engine();
        let (mut a, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..ROUNDS + 10 {
            let (x, y) = if r % 2 == 0 {
                let x = round(&mut none, &msgs, &mut buf, &mut c);
                (x, round(&mut production, &msgs, &mut buf, &mut c))
            } else {
                let y = round(&mut production, &msgs, &mut buf, &mut c);
                (round(&mut none, &msgs, &mut buf, &mut c), y)
            };
            // The first rounds warm caches and clocks up.
            if r >= 10 {
                a.push(x);
                b.push(y);
                d.push(y - x);
            }
        }
        println!(
            "  {label:>18}: no rules {:6.1}  production {:6.1}  difference {:5.1}",
            median(&mut a),
            median(&mut b),
            median(&mut d)
        );
    }
}
