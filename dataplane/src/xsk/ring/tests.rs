//! The rings against a simulated kernel side, including index wrap-around.

use std::cell::UnsafeCell;
use std::collections::VecDeque;

use super::*;

/// Ring memory owned by the test; the "kernel" side is driven by hand.
struct Shared {
    words: Box<[AtomicU32; 3]>, // producer, consumer, flags
    descs: Box<[UnsafeCell<u64>]>,
}

impl Shared {
    fn new(size: u32, start: u32) -> Self {
        Shared {
            words: Box::new([
                AtomicU32::new(start),
                AtomicU32::new(start),
                AtomicU32::new(0),
            ]),
            descs: (0..size).map(|_| UnsafeCell::new(0)).collect(),
        }
    }

    fn mem(&self) -> RingMem<u64> {
        let p = |i: usize| NonNull::from(&self.words[i]);
        // SAFETY: the boxes outlive every ring in these tests (declared first,
        // dropped last); sizes are powers of two.
        unsafe {
            RingMem::new(
                p(0),
                p(1),
                p(2),
                NonNull::new(self.descs[0].get()).unwrap(),
                self.descs.len() as u32,
                None,
            )
        }
    }

    fn at(&self, idx: u32) -> &UnsafeCell<u64> {
        &self.descs[(idx as usize) & (self.descs.len() - 1)]
    }

    /// Kernel consumes up to `n` entries of a ring we produce into.
    fn kernel_consume(&self, n: u32) -> Vec<u64> {
        let prod = self.words[0].load(Ordering::Acquire);
        let cons = self.words[1].load(Ordering::Relaxed);
        let take = prod.wrapping_sub(cons).min(n);
        // SAFETY: single-threaded test; the slots were published.
        let out = (0..take)
            .map(|i| unsafe { *self.at(cons.wrapping_add(i)).get() })
            .collect();
        self.words[1].store(cons.wrapping_add(take), Ordering::Release);
        out
    }

    /// Kernel produces entries into a ring we consume; returns how many fit.
    fn kernel_produce(&self, values: &[u64]) -> usize {
        let prod = self.words[0].load(Ordering::Relaxed);
        let cons = self.words[1].load(Ordering::Acquire);
        let free = self.descs.len() as u32 - prod.wrapping_sub(cons);
        let n = (values.len() as u32).min(free);
        for i in 0..n {
            // SAFETY: single-threaded test; slots are free.
            unsafe { *self.at(prod.wrapping_add(i)).get() = values[i as usize] };
        }
        self.words[0].store(prod.wrapping_add(n), Ordering::Release);
        n as usize
    }
}

#[test]
fn producer_publishes_only_on_commit() {
    let shm = Shared::new(8, 0);
    let mut ring = Producer::new(shm.mem());
    let mut w = ring.reserve(3);
    assert_eq!(w.capacity(), 3);
    for v in [10, 11, 12] {
        w.push(v).unwrap();
    }
    assert_eq!(w.push(13), Err(13), "reservation is full");
    assert!(
        shm.kernel_consume(8).is_empty(),
        "nothing visible before commit"
    );
    w.commit();
    assert_eq!(shm.kernel_consume(8), vec![10, 11, 12]);
}

#[test]
fn dropped_or_partial_writers_publish_only_what_was_written() {
    let shm = Shared::new(8, 0);
    let mut ring = Producer::new(shm.mem());
    {
        let mut w = ring.reserve(4);
        w.push(1).unwrap();
        // dropped without commit
    }
    let mut w = ring.reserve(4);
    assert_eq!(w.capacity(), 4, "cancelled slots are free again");
    w.push(2).unwrap();
    w.push(3).unwrap();
    w.commit();
    assert_eq!(shm.kernel_consume(8), vec![2, 3]);
    let mut w = ring.reserve(8);
    assert_eq!(w.capacity(), 8);
    w.push(4).unwrap();
    w.commit();
    assert_eq!(shm.kernel_consume(8), vec![4]);
}

#[test]
fn producer_reservation_is_limited_by_kernel_progress() {
    let shm = Shared::new(4, 0);
    let mut ring = Producer::new(shm.mem());
    let mut w = ring.reserve(10);
    assert_eq!(w.capacity(), 4, "partial reservation");
    for v in 0..4 {
        w.push(v).unwrap();
    }
    w.commit();
    assert_eq!(
        ring.reserve(1).capacity(),
        0,
        "full until the kernel consumes"
    );
    assert_eq!(ring.outstanding(), 4);
    shm.kernel_consume(3);
    assert_eq!(ring.outstanding(), 1);
    assert_eq!(ring.reserve(10).capacity(), 3);
}

#[test]
fn consumer_releases_only_what_was_read() {
    let shm = Shared::new(8, 0);
    let mut ring = Consumer::new(shm.mem());
    assert!(ring.peek(4).is_empty());
    assert_eq!(shm.kernel_produce(&[1, 2, 3, 4, 5]), 5);
    let mut r = ring.peek(4);
    assert_eq!(r.len(), 4);
    assert_eq!(r.next(), Some(1));
    assert_eq!(r.next(), Some(2));
    r.release();
    let r = ring.peek(8);
    assert_eq!(r.collect::<Vec<_>>(), vec![3, 4, 5]);
    // Not released: the same entries come back.
    let r = ring.peek(8);
    assert_eq!(r.len(), 3);
    let all: Vec<_> = {
        let mut r = ring.peek(8);
        let v: Vec<_> = r.by_ref().collect();
        r.release();
        v
    };
    assert_eq!(all, vec![3, 4, 5]);
    assert_eq!(
        shm.kernel_produce(&[0; 8]),
        8,
        "all slots returned to the kernel"
    );
}

#[test]
fn indices_wrap_at_two_to_the_32() {
    for start in [u32::MAX - 2, u32::MAX, u32::MAX - 1000, 0x8000_0000 - 3] {
        let prod_shm = Shared::new(16, start);
        let cons_shm = Shared::new(16, start);
        let mut prod = Producer::new(prod_shm.mem());
        let mut cons = Consumer::new(cons_shm.mem());
        let mut next = 0u64;
        let mut expect = 0u64;
        for round in 0..2000u64 {
            let mut w = prod.reserve((round % 7 + 1) as u32);
            while w.push(next).is_ok() {
                next += 1;
            }
            w.commit();
            for v in prod_shm.kernel_consume((round % 5 + 1) as u32) {
                assert_eq!(cons_shm.kernel_produce(&[v]), 1);
            }
            let mut r = cons.peek(3);
            for v in r.by_ref() {
                assert_eq!(v, expect, "start {start:#x} round {round}");
                expect += 1;
            }
            r.release();
        }
        assert!(expect > 1000, "made progress across the wrap");
    }
}

#[test]
fn corrupt_kernel_indices_cannot_overrun() {
    let shm = Shared::new(8, 100);
    let mut prod = Producer::new(shm.mem());
    let mut w = prod.reserve(8);
    while w.push(1).is_ok() {}
    w.commit();
    // The kernel claims to have consumed entries we never produced.
    shm.words[1].store(500, Ordering::Release);
    assert_eq!(
        prod.reserve(8).capacity(),
        0,
        "no room rather than a wrapped huge count"
    );
    assert!(prod.outstanding() <= 8);

    let shm = Shared::new(8, 100);
    let mut cons = Consumer::new(shm.mem());
    // The kernel claims far more entries than the ring holds.
    shm.words[0].store(100 + 1_000_000, Ordering::Release);
    let r = cons.peek(u32::MAX);
    assert_eq!(r.len(), 8, "never more than one ring's worth");
}

#[test]
fn randomized_against_a_model() {
    let shm = Shared::new(32, u32::MAX - 50);
    let mut ring = Producer::new(shm.mem());
    let mut model: VecDeque<u64> = VecDeque::new();
    let mut draw = crate::testing::xorshift(0x2545_f491);
    let mut rnd = move |m: u32| draw(u64::from(m)) as u32;
    let mut next = 0u64;
    for _ in 0..20_000 {
        if rnd(2) == 0 {
            let want = rnd(40);
            let mut w = ring.reserve(want);
            assert!(w.capacity() as usize <= 32 - model.len());
            let n = rnd(w.capacity() + 1);
            let mut pushed = Vec::new();
            for _ in 0..n {
                w.push(next).unwrap();
                pushed.push(next);
                next += 1;
            }
            if rnd(4) == 0 {
                drop(w);
                next -= pushed.len() as u64;
            } else {
                w.commit();
                model.extend(pushed);
            }
        } else {
            let got = shm.kernel_consume(rnd(40));
            let want: Vec<_> = model.drain(..got.len()).collect();
            assert_eq!(got, want);
        }
    }
}
