//! The production pipeline allocates nothing: a counting global allocator
//! sees no allocation across thousands of `Engine::frame` calls — local
//! answers, drops of every kind, forwarded queries and relayed replies — and
//! `Pipeline::decide` on bare messages (the kernel path and TCP).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use xdpdns_common::stats::DataplaneCounters;
use xdpdns_dataplane::forward::Emit;
use xdpdns_dataplane::frame::Headers;
use xdpdns_dataplane::testing::{
    FrameSpec, PEER, build, cached_forwarding_engine, forwarding_engine, local_engine,
    production_engine, query, turn_round, turn_round_with_answer,
};
use xdpdns_dataplane::xsk::Fate;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to System; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct NoEmit;

impl Emit for NoEmit {
    fn kernel(&mut self, _: std::net::SocketAddr, _: std::net::SocketAddr, _: &[u8]) -> bool {
        false
    }
    fn frame(&mut self, _: &Headers, _: &[u8]) -> bool {
        false
    }
}

#[test]
fn the_pipeline_allocates_nothing() {
    let mut local = local_engine(10);
    let mut production = production_engine();
    let mut fwd = forwarding_engine(10);
    let (mut cached, _cache) = cached_forwarding_engine(10, None);
    let cq = build(&FrameSpec::v4(), &query(9, "cached.example.com.", 1, None));
    let mut vlan = FrameSpec::v6();
    vlan.vlan = Some(7);
    let frames = [
        build(&FrameSpec::v4(), &query(1, "www.example.com.", 1, None)),
        build(
            &FrameSpec::v4(),
            &query(2, "x.example.", 16, Some((4096, 0, true))),
        ),
        build(&vlan, &query(3, "y.example.", 28, Some((1232, 1, false)))),
        build(&FrameSpec::v4(), &query(4, "a.blocked3.example.", 1, None)),
        build(&FrameSpec::v4(), &[0u8; 5]),
    ];
    let q = build(
        &FrameSpec::v4(),
        &query(5, "www.example.com.", 1, Some((1232, 0, false))),
    );
    // 100 rules and a 100 k-name blocklist: no match, a blocked name, a
    // spoofed answer.
    let production_frames = [
        build(&FrameSpec::v4(), &query(6, "www.example.com.", 1, None)),
        build(
            &FrameSpec::v4(),
            &query(7, "x.ads1.tracker1.example.", 1, None),
        ),
        build(
            &FrameSpec::v4(),
            &query(8, "spoof.example.", 28, Some((1232, 0, false))),
        ),
    ];
    let mut buf = vec![0u8; 1792];
    let mut reply = vec![0u8; 1792];
    // As the worker does at start: counters sized for the backends.
    let mut c = DataplaneCounters::new();
    c.size_backends(1);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut answered = 0;
    for i in 0..10_000 {
        let f = &frames[i % frames.len()];
        buf[..f.len()].copy_from_slice(f);
        let fate = local.frame(&mut buf, 0, f.len(), &mut c, &mut NoEmit);
        answered += usize::from(matches!(fate, Fate::Transmit { .. }));
        let n = f.len() - 42;
        buf[..n].copy_from_slice(&f[42..]);
        let _ = local.pipeline.decide(&mut buf, n, PEER, &mut c);
    }
    let mut spoofed = 0;
    for i in 0..3_000 {
        let f = &production_frames[i % production_frames.len()];
        buf[..f.len()].copy_from_slice(f);
        let fate = production.frame(&mut buf, 0, f.len(), &mut c, &mut NoEmit);
        if let Fate::Transmit { head, len } = fate {
            // ANCOUNT 1: the spoofed AAAA.
            spoofed += usize::from(buf[head + 42 + 7] == 1 && len > 0);
        }
    }
    let mut relayed = 0;
    for _ in 0..2_000 {
        buf[..q.len()].copy_from_slice(&q);
        let Fate::Transmit { head, len } = fwd.frame(&mut buf, 0, q.len(), &mut c, &mut NoEmit)
        else {
            panic!("not forwarded")
        };
        let n = turn_round(&buf[head..head + len], &mut reply);
        relayed += usize::from(matches!(
            fwd.frame(&mut reply, 0, n, &mut c, &mut NoEmit),
            Fate::Transmit { .. }
        ));
    }
    // The packet cache: a miss forwarded, its answer inserted, then hits.
    let mut hits = 0;
    for i in 0..2_000 {
        buf[..cq.len()].copy_from_slice(&cq);
        match cached.frame(&mut buf, 0, cq.len(), &mut c, &mut NoEmit) {
            Fate::Transmit { head, len } if i == 0 => {
                let n = turn_round_with_answer(&buf[head..head + len], &mut reply);
                assert!(matches!(
                    cached.frame(&mut reply, 0, n, &mut c, &mut NoEmit),
                    Fate::Transmit { .. }
                ));
            }
            Fate::Transmit { head, .. } => hits += usize::from(buf[head + 42 + 7] == 1),
            Fate::Recycle => panic!("dropped"),
        }
    }
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed) - before,
        0,
        "allocations in the pipeline"
    );
    assert_eq!((c.cache.inserts, c.cache.hits), (1, 1_999), "{:?}", c.cache);
    assert_eq!(hits, 1_999);
    // Four of five frames are answered (REFUSED, NXDOMAIN by rule, BADVERS); the
    // garbage one is dropped.
    assert_eq!(answered, 8_000);
    assert_eq!(relayed, 2_000, "{:?}", c.forward);
    assert_eq!(spoofed, 1_000);
}
