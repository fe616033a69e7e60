//! What the production rule set (#14) and a packet-cache hit (#13) cost a
//! query over a local REFUSED, measured interleaved: rounds alternate the
//! two engines compared (this VM's speed drifts by 10–20 % between runs;
//! alternating keeps both under the same drift), and the median of the
//! per-round differences is reported.
//!
//! - rules: REFUSED without rules against REFUSED under the production set
//!   (no rule matches), for one name (`www.example.com.`, the criterion
//!   benches' query) and for 256 names over many zones (what a frontend
//!   sees), a quarter of them under `example.`, the top of the blocklist's
//!   tree; and for 65,536 random names (under `example.com.`, `example.`
//!   and `net.`), whose filter words and table slots are seldom cached.
//! - cache: REFUSED against a cache hit for the same plain query, both
//!   under the production rules (as `pipeline/decide/…/plain` in criterion).

use std::hint::black_box;
use std::time::Instant;

use xdpdns_common::stats::DataplaneCounters;
use xdpdns_dataplane::engine::Engine;
use xdpdns_dataplane::testing::{PEER, local_engine, production_engine, query, warm_cached_engine};

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

/// `base` and `other` on `msgs`, alternating which goes first.
fn compare(label: &str, base: &mut Engine, other: &mut Engine, msgs: &[Vec<u8>]) {
    let mut buf = vec![0u8; 2048];
    let mut c = DataplaneCounters::new();
    let (mut a, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..ROUNDS + 10 {
        let (x, y) = if r % 2 == 0 {
            let x = round(base, msgs, &mut buf, &mut c);
            (x, round(other, msgs, &mut buf, &mut c))
        } else {
            let y = round(other, msgs, &mut buf, &mut c);
            (round(base, msgs, &mut buf, &mut c), y)
        };
        // The first rounds warm caches and clocks up.
        if r >= 10 {
            a.push(x);
            b.push(y);
            d.push(y - x);
        }
    }
    println!(
        "  {label:>34}: {:6.1} against {:6.1}  difference {:5.1}",
        median(&mut a),
        median(&mut b),
        median(&mut d)
    );
}

fn main() {
    println!("ns per query, medians of {ROUNDS} interleaved rounds of {PER_ROUND}");
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
    let one = vec!["www.example.com.".to_string()];
    // Random names, as an attack or a resolver's cache misses bring them:
    // the Bloom filter's words and the table's slots are mostly not in
    // the CPU's caches.
    let mut rand = xdpdns_dataplane::testing::xorshift(0x9e37_79b9_7f4a_7c15);
    let random: Vec<String> = (0..65_536)
        .map(|i| {
            let tail = ["example.com.", "example.", "net."][i % 3];
            format!("q{:x}.{tail}", rand(1 << 44))
        })
        .collect();
    for (label, names) in [
        ("rules over none, www.example.com.", &one),
        ("rules over none, 256 names", &mixed),
        ("rules over none, 65,536 random names", &random),
    ] {
        let msgs: Vec<Vec<u8>> = names
            .iter()
            .map(|n| query(1, n, 1, Some((1232, 0, true))))
            .collect();
        compare(label, &mut local_engine(0), &mut production_engine(), &msgs);
    }

    // A hit against a local REFUSED, both under the production rules.
    let plain = query(1, "www.example.com.", 1, None);
    let mut cached = warm_cached_engine(&plain);
    compare(
        "cache hit over REFUSED",
        &mut production_engine(),
        &mut cached,
        &[plain],
    );
}
