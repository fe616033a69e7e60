//! The chunk ownership model of `pool.rs`, against a simulated kernel: no
//! chunk is ever lost or held twice, whatever the callbacks decide and
//! whatever descriptors the kernel hands over.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::ring::{Consumer, Producer, RingMem};
use super::socket::{Fate, Frames, Rings};
use super::umem::Umem;

const FRAMES: u32 = 16;
const RING: u32 = 8;
const HEADROOM: u64 = 256;

/// One ring's memory, the "kernel" side driven by the test.
struct SimRing<T: Copy> {
    words: Box<[AtomicU32; 3]>,
    slots: Box<[UnsafeCell<T>]>,
}

impl<T: Copy> SimRing<T> {
    fn new(zero: T) -> Self {
        SimRing {
            words: Box::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]),
            slots: (0..RING).map(|_| UnsafeCell::new(zero)).collect(),
        }
    }

    fn mem(&self) -> RingMem<T> {
        let p = |i: usize| NonNull::from(&self.words[i]);
        // SAFETY: the SimRing outlives the rings made from it (the test keeps
        // both until the end); RING is a power of two.
        unsafe {
            RingMem::new(
                p(0),
                p(1),
                p(2),
                NonNull::new(self.slots[0].get()).unwrap(),
                RING,
                None,
            )
        }
    }

    fn slot(&self, i: u32) -> *mut T {
        self.slots[(i & (RING - 1)) as usize].get()
    }

    /// The kernel takes what userspace produced.
    fn consume(&self, max: u32) -> Vec<T> {
        let prod = self.words[0].load(Ordering::Acquire);
        let cons = self.words[1].load(Ordering::Relaxed);
        let n = prod.wrapping_sub(cons).min(max);
        // SAFETY: single-threaded; the slots were published.
        let out = (0..n)
            .map(|i| unsafe { *self.slot(cons.wrapping_add(i)) })
            .collect();
        self.words[1].store(cons.wrapping_add(n), Ordering::Release);
        out
    }

    /// The kernel produces for userspace; returns how many fit.
    fn produce(&self, values: &[T]) -> usize {
        let prod = self.words[0].load(Ordering::Relaxed);
        let cons = self.words[1].load(Ordering::Acquire);
        let n = (RING - prod.wrapping_sub(cons)).min(values.len() as u32);
        for i in 0..n {
            // SAFETY: single-threaded; the slots are free.
            unsafe { *self.slot(prod.wrapping_add(i)) = values[i as usize] };
        }
        self.words[0].store(prod.wrapping_add(n), Ordering::Release);
        n as usize
    }

    fn pending(&self) -> u32 {
        let prod = self.words[0].load(Ordering::Acquire);
        prod.wrapping_sub(self.words[1].load(Ordering::Acquire))
    }
}

fn desc(addr: u64, len: u32) -> libc::xdp_desc {
    libc::xdp_desc {
        addr,
        len,
        options: 0,
    }
}

struct Kernel {
    fill: SimRing<u64>,
    completion: SimRing<u64>,
    rx: SimRing<libc::xdp_desc>,
    tx: SimRing<libc::xdp_desc>,
    /// Chunks taken from the fill ring, not yet delivered.
    armed: VecDeque<u64>,
    /// Chunks taken from the TX ring, not yet completed.
    sending: VecDeque<u64>,
}

impl Kernel {
    fn new() -> (Kernel, Frames) {
        let k = Kernel {
            fill: SimRing::new(0),
            completion: SimRing::new(0),
            rx: SimRing::new(desc(0, 0)),
            tx: SimRing::new(desc(0, 0)),
            armed: VecDeque::new(),
            sending: VecDeque::new(),
        };
        let rings = Rings {
            fill: Producer::new(k.fill.mem()),
            completion: Consumer::new(k.completion.mem()),
            rx: Consumer::new(k.rx.mem()),
            tx: Producer::new(k.tx.mem()),
        };
        let frames = Frames::new(rings, Umem::new(FRAMES, 2048).unwrap());
        (k, frames)
    }

    /// Chunks the kernel side holds, in rings or in hand.
    fn held(&self) -> u32 {
        self.fill.pending()
            + self.rx.pending()
            + self.tx.pending()
            + self.completion.pending()
            + self.armed.len() as u32
            + self.sending.len() as u32
    }

    fn step(&mut self, deliver: u32, complete: u32) {
        self.armed.extend(self.fill.consume(RING));
        for _ in 0..deliver {
            let Some(chunk) = self.armed.pop_front() else {
                break;
            };
            if self.rx.produce(&[desc(chunk + HEADROOM, 60)]) == 0 {
                self.armed.push_front(chunk);
                break;
            }
        }
        for d in self.tx.consume(RING) {
            self.sending.push_back(d.addr & !2047);
        }
        for _ in 0..complete {
            let Some(c) = self.sending.pop_front() else {
                break;
            };
            if self.completion.produce(&[c]) == 0 {
                self.sending.push_front(c);
                break;
            }
        }
    }
}

fn owned_by_userspace(f: &mut Frames) -> u32 {
    let l = f.levels();
    l.free + l.tx_backlog
}

#[test]
fn every_chunk_is_in_exactly_one_place_whatever_the_callbacks_decide() {
    let (mut k, mut f) = Kernel::new();
    let mut draw = crate::testing::xorshift(0x9e37_79b9);
    let mut rnd = move |m: u32| draw(u64::from(m)) as u32;
    let mut transmitted = 0;
    for round in 0..5_000 {
        f.refill();
        k.step(rnd(6), rnd(6));
        f.reclaim(RING);
        let rx = f.receive(rnd(5), |chunk, head, len| {
            assert_eq!(head, HEADROOM as usize);
            assert_eq!(len, 60);
            assert_eq!(chunk.len(), 2048);
            match rnd(3) {
                0 => Fate::Recycle,
                _ => Fate::Transmit { head: 100, len: 80 },
            }
        });
        assert_eq!(rx.invalid, 0);
        if rnd(4) == 0 {
            f.build(|chunk| {
                chunk[300] = 1;
                Some((300, 50))
            });
        }
        transmitted += f.flush(rnd(2) == 0, false, || Ok(())).queued;
        assert_eq!(
            owned_by_userspace(&mut f) + k.held(),
            FRAMES,
            "round {round}: a chunk was lost or counted twice"
        );
    }
    assert!(transmitted > 1000, "traffic flowed: {transmitted}");
}

#[test]
fn hostile_descriptors_are_refused_without_losing_chunks() {
    let (k, mut f) = Kernel::new();
    f.refill();
    let armed = k.fill.consume(RING);
    assert_eq!(armed.len(), RING as usize);
    // Outside the UMEM; past its chunk; a valid one.
    k.rx.produce(&[
        desc(u64::from(FRAMES) * 2048 + 256, 60),
        desc(armed[0] + 2000, 100),
        desc(armed[1] + 256, 60),
    ]);
    let mut seen = 0;
    let rx = f.receive(8, |_, _, _| {
        seen += 1;
        // A callback asking to send past its chunk is refused too.
        Fate::Transmit {
            head: 2000,
            len: 100,
        }
    });
    assert_eq!(seen, 1, "only the valid frame reaches the callback");
    assert_eq!(rx.received, 3);
    assert_eq!(rx.invalid, 2);
    assert_eq!(rx.bad_transmits, 1);
    // The two in-UMEM chunks are free again; the bogus address was never ours.
    let l = f.levels();
    assert_eq!(l.free, FRAMES - RING + 2);
    assert_eq!(l.tx_backlog, 0);
}

#[test]
fn a_full_tx_ring_keeps_the_rest_queued_and_kicks() {
    let (k, mut f) = Kernel::new();
    for _ in 0..12 {
        assert!(f.build(|_| Some((256, 64))));
    }
    let mut kicks = 0;
    let tx = f.flush(true, false, || {
        kicks += 1;
        Ok(())
    });
    assert_eq!(tx.queued, RING);
    assert_eq!(tx.waiting, 4);
    assert!(tx.kicked && kicks == 1, "waiting frames force a kick");
    assert_eq!(k.tx.consume(RING).len(), RING as usize);
    // While RX delivers and few are outstanding, the kick is deferred.
    let (_k2, mut g) = Kernel::new();
    assert!(g.build(|_| Some((256, 64))));
    let tx = g.flush(true, false, || panic!("no kick expected"));
    assert_eq!((tx.queued, tx.kicked), (1, false));
    let tx = g.flush(false, false, || {
        Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
    });
    assert!(tx.kicked && !tx.kick_failed, "EAGAIN is not a failure");
    let tx = g.flush(false, false, || {
        Err(std::io::Error::from_raw_os_error(libc::ENXIO))
    });
    assert!(tx.kick_failed);
}

#[test]
fn a_declined_or_oversized_build_returns_its_chunk() {
    let (_k, mut f) = Kernel::new();
    assert!(!f.build(|_| None));
    assert!(!f.build(|_| Some((2000, 100))));
    assert_eq!(f.levels().free, FRAMES);
    for _ in 0..FRAMES {
        assert!(f.build(|_| Some((0, 60))));
    }
    assert!(!f.build(|_| Some((0, 60))), "no free chunk left");
}
