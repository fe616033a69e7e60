use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use super::*;

/// Any query in flight may be given up (what the eviction tests want).
fn any(_: u16, _: u64) -> bool {
    true
}

/// Queries sent before `ns` may be given up.
fn sent_before(ns: u64) -> impl Fn(u16, u64) -> bool {
    move |_, sent| sent < ns
}

fn entry(backend: u16, deadline_ms: u64, tag: u8) -> Entry {
    let mut question = [0u8; MAX_QUESTION];
    question[..5].copy_from_slice(&[1, tag, 0, 0, 1]);
    Entry {
        deadline_ms,
        sent_ns: 42,
        backend,
        client: Client {
            xsk: true,
            v6: tag.is_multiple_of(2),
            vlan: Some(100 + u16::from(tag)),
            mac: [2, 0, 0, 0, 0, tag],
            ip: [tag; 16],
            port: 40000 + u16::from(tag),
            local_ip: [9; 16],
            local_port: 53,
            id: 0xbeef,
            flags: 0x0110 | u16::from(tag),
            edns: tag.is_multiple_of(3),
            dnssec_ok: tag.is_multiple_of(5),
        },
        question_len: 5,
        question,
        cache: tag
            .is_multiple_of(2)
            .then_some(u32::from(tag) * 0x0101_0101),
    }
}

/// Keys as the forwarder draws them (any uniform source does).
fn keys(seed: u32) -> impl FnMut() -> u32 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    }
}

#[test]
fn insert_then_claim_round_trips_every_field() {
    let t = Table::anonymous(2, 64).unwrap();
    let mut a = t.allocator(1);
    let e = entry(3, 1000, 7);
    let ins = t.insert(&mut a, &e, any, keys(1)).unwrap();
    assert_eq!(t.in_flight(1), 1);
    let c = t.claim(ins.key, 3).unwrap();
    assert_eq!((c.entry, c.owner), (e, 1));
    assert_eq!(t.in_flight(1), 0);
    assert_eq!(
        t.claim(ins.key, 3),
        Err(ClaimError::Taken),
        "a duplicate reply finds its cell claimed"
    );
}

#[test]
fn the_key_is_what_the_draw_gave_and_a_taken_cell_is_drawn_again() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let first = t
        .insert(&mut a, &entry(1, 1000, 1), any, || 0x1234_5678)
        .unwrap();
    assert_eq!(first.key, 0x1234_5678);
    // The same key again: its cell is taken, so the next draw is used.
    let mut draws = [0x1234_5678u32, 0x0bad_f00d].into_iter();
    let second = t
        .insert(&mut a, &entry(1, 1000, 2), any, || draws.next().unwrap())
        .unwrap();
    assert_eq!(second.key, 0x0bad_f00d);
    // Only taken keys: no slot, and nothing half-inserted.
    assert_eq!(
        t.insert(&mut a, &entry(1, 1000, 3), any, || 0x1234_5678),
        Err(InsertError::NoCell)
    );
    assert_eq!(t.in_flight(0), 2);
    assert!(t.claim(first.key, 1).is_ok() && t.claim(second.key, 1).is_ok());
}

#[test]
fn wrong_key_or_backend_do_not_claim() {
    let t = Table::anonymous(2, 64).unwrap();
    let mut a = t.allocator(0);
    let k = t
        .insert(&mut a, &entry(1, 1000, 1), any, keys(2))
        .unwrap()
        .key;
    assert_eq!(t.claim(k, 2), Err(ClaimError::Unknown), "other backend");
    assert_eq!(t.claim(k ^ 1, 1), Err(ClaimError::Unknown), "other ID");
    assert_eq!(
        t.claim(k ^ 0x1_0000, 1),
        Err(ClaimError::Unknown),
        "other port"
    );
    assert!(t.claim(k, 1).is_ok());
}

#[test]
fn a_reused_slot_rejects_the_previous_query() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let mut draw = keys(3);
    let first = t
        .insert(&mut a, &entry(1, 1000, 1), any, &mut draw)
        .unwrap();
    t.claim(first.key, 1).unwrap();
    // Cycle the cursor back to the same slot.
    for _ in 0..63 {
        let k = t
            .insert(&mut a, &entry(1, 1000, 2), any, &mut draw)
            .unwrap()
            .key;
        t.claim(k, 1).unwrap();
    }
    let again = t
        .insert(&mut a, &entry(1, 1000, 3), any, || first.key)
        .unwrap();
    assert_eq!(again.index, first.index, "same slot");
    assert_eq!(again.key, first.key, "even the same key");
    // A stale cell naming the old generation (a hostile or late writer)
    // does not match the slot's new generation.
    let stale = Table::cell_value(first.key, 0, 1);
    t.cell(first.key).store(stale, Ordering::Release);
    assert_eq!(t.claim(first.key, 1), Err(ClaimError::Unknown));
}

#[test]
fn sweeps_free_exactly_the_slots_past_their_deadline_and_report_free_ones() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let mut draw = keys(4);
    let keys: Vec<u32> = (0..64u64)
        .map(|i| {
            let ins = t
                .insert(&mut a, &entry(1, 100 + i, 1), any, &mut draw)
                .unwrap();
            assert_eq!(ins.evicted, None);
            ins.key
        })
        .collect();
    t.claim(keys[63], 1).unwrap();
    let (mut expired, mut free) = (Vec::new(), Vec::new());
    t.sweep(0, 131, |i, s| match s {
        Swept::Expired(e) => expired.push((i, e.deadline_ms)),
        Swept::Free => free.push(i),
    });
    assert_eq!(expired.len(), 32);
    assert!(
        expired
            .iter()
            .all(|(i, d)| *d <= 131 && u64::from(*i) + 100 == *d)
    );
    assert_eq!(free, [63], "the slot a reply freed");
    assert_eq!(t.in_flight(0), 31);
    assert_eq!(
        t.claim(keys[0], 1),
        Err(ClaimError::Unknown),
        "expired: cell gone"
    );
    let mut again = 0;
    t.sweep(0, 131, |_, s| {
        again += usize::from(matches!(s, Swept::Expired(_)))
    });
    assert_eq!(again, 0, "nothing expires twice");
}

#[test]
fn a_full_region_evicts_its_oldest_query_and_only_that() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let mut draw = keys(5);
    let ks: Vec<u32> = (0..64u16)
        .map(|i| {
            t.insert(&mut a, &entry(1 + i % 3, 1000, 1), any, &mut draw)
                .unwrap()
                .key
        })
        .collect();
    // A reply freed the second oldest: the oldest goes first, then the
    // freed slot is reused without evicting anyone.
    t.claim(ks[1], 2).unwrap();
    let ins = t
        .insert(&mut a, &entry(7, 1000, 2), any, &mut draw)
        .unwrap();
    assert_eq!(ins.evicted, Some(1), "the oldest query's backend");
    assert_eq!(ins.index, 0, "into the oldest's slot");
    assert_eq!(
        t.claim(ks[0], 1),
        Err(ClaimError::Unknown),
        "the evicted query's late reply matches nothing"
    );
    let ins = t
        .insert(&mut a, &entry(7, 1000, 3), any, &mut draw)
        .unwrap();
    assert_eq!(ins.evicted, None, "the slot a reply freed");
    let ins = t
        .insert(&mut a, &entry(7, 1000, 4), any, &mut draw)
        .unwrap();
    assert_eq!(
        ins.evicted,
        Some(3),
        "then the next oldest (backend 1 + 2 % 3)"
    );
    assert_eq!(t.in_flight(0), 64);
    assert!(t.claim(ks[3], 1).is_ok(), "younger queries stay answerable");
}

#[test]
fn young_queries_in_flight_are_never_given_up_for_new_ones() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let mut draw = keys(9);
    // Every query was sent at 42 ns (entry()).
    let ks: Vec<u32> = (0..64)
        .map(|_| {
            t.insert(&mut a, &entry(1, 1000, 1), sent_before(42), &mut draw)
                .unwrap()
                .key
        })
        .collect();
    // Full of queries sent at 42: none older than 42, so none is evicted.
    assert_eq!(
        t.insert(&mut a, &entry(1, 1000, 2), sent_before(42), &mut draw),
        Err(InsertError::Busy)
    );
    assert_eq!(t.in_flight(0), 64);
    // A free slot within PROBES of the cursor is found...
    let cursor = (PROBES as usize) % 64; // the failed insert moved it on
    t.claim(ks[cursor + 3], 1).unwrap();
    let ins = t
        .insert(&mut a, &entry(1, 1000, 3), sent_before(42), &mut draw)
        .unwrap();
    assert_eq!((ins.index as usize, ins.evicted), (cursor + 3, None));
    // ... one further away is not: the queue is at its limit.
    t.claim(ks[cursor + 3 + 2 * PROBES as usize], 1).unwrap();
    assert_eq!(
        t.insert(&mut a, &entry(1, 1000, 4), sent_before(42), &mut draw),
        Err(InsertError::Busy)
    );
    // Old enough (sent before 43), the query under the cursor goes.
    let ins = t
        .insert(&mut a, &entry(1, 1000, 5), sent_before(43), &mut draw)
        .unwrap();
    assert_eq!(ins.evicted, Some(1));
}

#[test]
fn eviction_racing_a_claim_has_exactly_one_winner() {
    let t = Arc::new(Table::anonymous(1, 64).unwrap());
    let mut draw = keys(6);
    for round in 0..300u64 {
        let mut a = t.allocator(0);
        // Fill the region so the next insert hits the oldest slot.
        let oldest = t
            .insert(&mut a, &entry(1, round, 1), any, &mut draw)
            .unwrap()
            .key;
        for _ in 1..64 {
            t.insert(&mut a, &entry(2, round, 1), any, &mut draw)
                .unwrap();
        }
        let (claimed, evicted) = std::thread::scope(|s| {
            let t1 = t.clone();
            let claimer = s.spawn(move || t1.claim(oldest, 1).is_ok());
            let ins = t
                .insert(&mut a, &entry(3, round, 2), any, &mut draw)
                .unwrap();
            (claimer.join().unwrap(), ins.evicted == Some(1))
        });
        assert!(
            claimed ^ evicted,
            "round {round}: claimed {claimed}, evicted {evicted}"
        );
        t.sweep(0, u64::MAX, |_, _| {});
    }
}

#[test]
fn long_questions_are_kept_whole() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let mut e = entry(1, 1000, 1);
    e.question_len = MAX_QUESTION as u16;
    for (i, b) in e.question.iter_mut().enumerate() {
        *b = i as u8;
    }
    let k = t.insert(&mut a, &e, any, keys(7)).unwrap().key;
    assert_eq!(t.claim(k, 1).unwrap().entry.question(), e.question());
}

#[test]
fn concurrent_claims_of_one_reply_succeed_exactly_once() {
    let t = Arc::new(Table::anonymous(2, 256).unwrap());
    let mut draw = keys(8);
    for round in 0..200u64 {
        let mut a = t.allocator(0);
        let k = t
            .insert(&mut a, &entry(1, round, 1), any, &mut draw)
            .unwrap()
            .key;
        let won = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (t, won) = (t.clone(), won.clone());
                s.spawn(move || {
                    if t.claim(k, 1).is_ok() {
                        won.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // The owner expires concurrently: still exactly one winner.
            let won2 = won.clone();
            let t2 = t.clone();
            s.spawn(move || {
                t2.sweep(0, u64::MAX, |_, s| {
                    if matches!(s, Swept::Expired(_)) {
                        won2.fetch_add(1, Ordering::Relaxed);
                    }
                });
            });
        });
        assert_eq!(won.load(Ordering::Relaxed), 1, "round {round}");
    }
}

#[test]
fn an_owner_inserting_while_others_claim_never_loses_or_duplicates() {
    let t = Arc::new(Table::anonymous(1, 128).unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let rx = std::sync::Mutex::new(rx);
    let claimed = Arc::new(AtomicUsize::new(0));
    let unmatched = Arc::new(AtomicUsize::new(0));
    let evicted = std::thread::scope(|s| {
        let t1 = t.clone();
        let claimed1 = claimed.clone();
        let unmatched1 = unmatched.clone();
        let owner = s.spawn(move || {
            let mut a = t1.allocator(0);
            let mut draw = keys(9);
            let (mut sent, mut evicted) = (0, 0);
            while sent < 20_000 {
                // Mostly below the region's size; a claimer preempted for
                // a whole lap of the cursor still gets its entry evicted.
                let done = claimed1.load(Ordering::Acquire) + unmatched1.load(Ordering::Acquire);
                if sent - done < 100 {
                    let ins = t1
                        .insert(&mut a, &entry(1, 1000, 1), any, &mut draw)
                        .unwrap();
                    evicted += usize::from(ins.evicted.is_some());
                    tx.send(ins.key).unwrap();
                    sent += 1;
                }
            }
            evicted
        });
        for _ in 0..3 {
            let (t, claimed, unmatched, rx) = (t.clone(), claimed.clone(), unmatched.clone(), &rx);
            s.spawn(move || {
                loop {
                    let k = match rx.lock().unwrap().recv() {
                        Ok(k) => k,
                        Err(_) => break,
                    };
                    // Every reply is delivered twice: at most one claim wins.
                    let first = t.claim(k, 1).is_ok();
                    let second = t.claim(k, 1).is_ok();
                    assert!(!second, "a duplicate never wins");
                    let n = if first { &claimed } else { &unmatched };
                    n.fetch_add(1, Ordering::Release);
                }
            });
        }
        owner.join().unwrap()
    });
    assert_eq!(
        unmatched.load(Ordering::Relaxed),
        evicted,
        "only evicted queries miss their reply"
    );
    assert_eq!(claimed.load(Ordering::Relaxed) + evicted, 20_000);
    assert_eq!(t.in_flight(0), 0);
}

#[test]
fn a_refused_check_leaves_the_slot_for_the_real_reply() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let k = t
        .insert(&mut a, &entry(1, 1000, 4), any, keys(10))
        .unwrap()
        .key;
    assert_eq!(t.claim_if(k, 1, |_| false), Err(ClaimError::Mismatch));
    assert_eq!(t.in_flight(0), 1);
    assert!(t.claim_if(k, 1, |e| e.client.port == 40004).is_ok());
}

#[test]
fn garbage_in_the_index_or_slots_never_panics_or_claims_wrongly() {
    let t = Table::anonymous(2, 64).unwrap();
    let mut a = t.allocator(0);
    let mut draw = keys(11);
    let good = t
        .insert(&mut a, &entry(1, 1000, 1), any, &mut draw)
        .unwrap()
        .key;
    // A hostile dataplane scribbles over every index cell but the good one's
    // and over a slot: lookups stay in bounds and claim nothing.
    let words = t.region.words();
    let good_cell = t.cell(good) as *const AtomicU64;
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for w in &words[t.index_at..] {
        if !std::ptr::eq(w, good_cell) {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            w.store(s | CELL_VALID, Ordering::Relaxed);
        }
    }
    for w in &words[SLOT_WORDS..2 * SLOT_WORDS] {
        w.store(u64::MAX, Ordering::Relaxed);
    }
    for _ in 0..100_000 {
        let k = draw();
        if k != good {
            assert!(t.claim(k, 1).is_err());
        }
    }
    assert!(t.claim(good, 1).is_ok(), "the real reply still matches");
    t.sweep(0, u64::MAX, |_, _| {});
    t.sweep(1, u64::MAX, |_, _| {});
}

#[test]
fn a_sweep_of_some_slots_visits_those_only() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let mut draw = keys(11);
    let placed: Vec<(u32, u32)> = (0..8u64)
        .map(|i| {
            let ins = t
                .insert(&mut a, &entry(1, 100 + i, 1), any, &mut draw)
                .unwrap();
            (ins.index, ins.key)
        })
        .collect();
    // Past every deadline; slots 0 and 1 of the list, an index past the
    // region, and a free slot.
    let free = (0..64u32)
        .find(|i| placed.iter().all(|(p, _)| p != i))
        .unwrap();
    let list = [placed[0].0, placed[1].0, 64, u32::MAX, free];
    let mut seen = Vec::new();
    t.sweep_slots(0, 1_000, &list, |i, s| {
        seen.push((i, matches!(s, Swept::Expired(_))))
    });
    assert_eq!(
        seen,
        [(placed[0].0, true), (placed[1].0, true), (free, false)],
        "the listed slots, in order; none past the region"
    );
    assert_eq!(t.in_flight(0), 6, "the others stay in flight");
    assert_eq!(t.claim(placed[0].1, 1), Err(ClaimError::Unknown));
    assert!(t.claim(placed[2].1, 1).is_ok(), "unlisted: still claimable");
    let mut expired = 0;
    t.sweep(0, 1_000, |_, s| {
        expired += usize::from(matches!(s, Swept::Expired(_)))
    });
    assert_eq!(expired, 5, "a full sweep finds the rest");
}
