use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use super::*;

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
    }
}

#[test]
fn insert_then_claim_round_trips_every_field() {
    let t = Table::anonymous(2, 64).unwrap();
    let mut a = t.allocator(1);
    let e = entry(3, 1000, 7);
    let id = t.insert(&mut a, &e).unwrap().id;
    assert_eq!(t.in_flight(1), 1);
    assert_eq!(t.claim(1, id, 3), Ok(e));
    assert_eq!(t.in_flight(1), 0);
    assert_eq!(
        t.claim(1, id, 3),
        Err(ClaimError::Taken),
        "a duplicate reply finds nothing"
    );
}

#[test]
fn wrong_backend_queue_or_generation_do_not_claim() {
    let t = Table::anonymous(2, 64).unwrap();
    let mut a = t.allocator(0);
    let id = t.insert(&mut a, &entry(1, 1000, 1)).unwrap().id;
    assert_eq!(t.claim(0, id, 2), Err(ClaimError::Unknown), "other backend");
    assert_eq!(
        t.claim(1, id, 1),
        Err(ClaimError::Taken),
        "other queue's region is empty"
    );
    assert_eq!(t.claim(5, id, 1), Err(ClaimError::Unknown), "no such queue");
    let stale = id ^ 0x8000; // same slot, other generation bits
    assert_eq!(t.claim(0, stale, 1), Err(ClaimError::Unknown));
    assert!(t.claim(0, id, 1).is_ok());
}

#[test]
fn a_reused_slot_rejects_the_previous_generation() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let first = t.insert(&mut a, &entry(1, 1000, 1)).unwrap().id;
    t.claim(0, first, 1).unwrap();
    // Cycle the cursor back to the same slot.
    for _ in 0..63 {
        let id = t.insert(&mut a, &entry(1, 1000, 2)).unwrap().id;
        t.claim(0, id, 1).unwrap();
    }
    let again = t.insert(&mut a, &entry(1, 1000, 3)).unwrap().id;
    assert_eq!(again & 63, first & 63, "same slot");
    assert_ne!(again, first, "new generation, new ID");
    assert_eq!(
        t.claim(0, first, 1),
        Err(ClaimError::Unknown),
        "late reply to the old query"
    );
    assert!(t.claim(0, again, 1).is_ok());
}

#[test]
fn expiry_frees_exactly_the_slots_past_their_deadline() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    for i in 0..64u64 {
        let ins = t.insert(&mut a, &entry(1, 100 + i, 1)).unwrap();
        assert_eq!(ins.evicted, None);
    }
    let mut expired = Vec::new();
    assert_eq!(t.expire(0, 131, |e| expired.push(e.deadline_ms)), 32);
    assert!(expired.iter().all(|d| *d <= 131));
    assert_eq!(t.in_flight(0), 32);
    assert_eq!(t.expire(0, 131, |_| {}), 0, "nothing expires twice");
}

#[test]
fn a_full_region_evicts_its_oldest_query_and_only_that() {
    let t = Table::anonymous(1, 64).unwrap();
    let mut a = t.allocator(0);
    let ids: Vec<u16> = (0..64u16)
        .map(|i| t.insert(&mut a, &entry(1 + i % 3, 1000, 1)).unwrap().id)
        .collect();
    // A reply freed the second oldest: the oldest goes first, then the
    // freed slot is reused without evicting anyone.
    t.claim(0, ids[1], 2).unwrap();
    let ins = t.insert(&mut a, &entry(7, 1000, 2)).unwrap();
    assert_eq!(ins.evicted, Some(1), "the oldest query's backend");
    assert_eq!(ins.id & 63, ids[0] & 63, "into the oldest's slot");
    assert_eq!(
        t.claim(0, ids[0], 1),
        Err(ClaimError::Unknown),
        "the evicted query's late reply matches nothing"
    );
    let ins = t.insert(&mut a, &entry(7, 1000, 3)).unwrap();
    assert_eq!(ins.evicted, None, "the slot a reply freed");
    let ins = t.insert(&mut a, &entry(7, 1000, 4)).unwrap();
    assert_eq!(
        ins.evicted,
        Some(3),
        "then the next oldest (backend 1 + 2 % 3)"
    );
    assert_eq!(t.in_flight(0), 64);
    assert!(
        t.claim(0, ids[3], 1).is_ok(),
        "younger queries stay answerable"
    );
}

#[test]
fn eviction_racing_a_claim_has_exactly_one_winner() {
    let t = Arc::new(Table::anonymous(1, 64).unwrap());
    for round in 0..300u64 {
        let mut a = t.allocator(0);
        // Fill the region so the next insert hits the oldest slot.
        let oldest = t.insert(&mut a, &entry(1, round, 1)).unwrap().id;
        for _ in 1..64 {
            t.insert(&mut a, &entry(2, round, 1)).unwrap();
        }
        let (claimed, evicted) = std::thread::scope(|s| {
            let t1 = t.clone();
            let claimer = s.spawn(move || t1.claim(0, oldest, 1).is_ok());
            let ins = t.insert(&mut a, &entry(3, round, 2)).unwrap();
            (claimer.join().unwrap(), ins.evicted == Some(1))
        });
        assert!(
            claimed ^ evicted,
            "round {round}: claimed {claimed}, evicted {evicted}"
        );
        t.expire(0, u64::MAX, |_| {});
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
    let id = t.insert(&mut a, &e).unwrap().id;
    assert_eq!(t.claim(0, id, 1).unwrap().question(), e.question());
}

#[test]
fn concurrent_claims_of_one_reply_succeed_exactly_once() {
    let t = Arc::new(Table::anonymous(2, 256).unwrap());
    for round in 0..200u64 {
        let mut a = t.allocator(0);
        let id = t.insert(&mut a, &entry(1, round, 1)).unwrap().id;
        let won = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (t, won) = (t.clone(), won.clone());
                s.spawn(move || {
                    if t.claim(0, id, 1).is_ok() {
                        won.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // The owner expires concurrently: still exactly one winner.
            let won2 = won.clone();
            let t2 = t.clone();
            s.spawn(move || {
                won2.fetch_add(t2.expire(0, u64::MAX, |_| {}), Ordering::Relaxed);
            });
        });
        assert_eq!(won.load(Ordering::Relaxed), 1, "round {round}");
    }
}

#[test]
fn an_owner_inserting_while_others_claim_never_loses_or_duplicates() {
    let t = Arc::new(Table::anonymous(1, 128).unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<u16>();
    let rx = std::sync::Mutex::new(rx);
    let claimed = Arc::new(AtomicUsize::new(0));
    let unmatched = Arc::new(AtomicUsize::new(0));
    let evicted = std::thread::scope(|s| {
        let t1 = t.clone();
        let claimed1 = claimed.clone();
        let unmatched1 = unmatched.clone();
        let owner = s.spawn(move || {
            let mut a = t1.allocator(0);
            let (mut sent, mut evicted) = (0, 0);
            while sent < 20_000 {
                // Mostly below the region's size; a claimer preempted for
                // a whole lap of the cursor still gets its entry evicted.
                let done = claimed1.load(Ordering::Acquire) + unmatched1.load(Ordering::Acquire);
                if sent - done < 100 {
                    let ins = t1.insert(&mut a, &entry(1, 1000, 1)).unwrap();
                    evicted += usize::from(ins.evicted.is_some());
                    tx.send(ins.id).unwrap();
                    sent += 1;
                }
            }
            evicted
        });
        for _ in 0..3 {
            let (t, claimed, unmatched, rx) = (t.clone(), claimed.clone(), unmatched.clone(), &rx);
            s.spawn(move || {
                loop {
                    let id = match rx.lock().unwrap().recv() {
                        Ok(id) => id,
                        Err(_) => break,
                    };
                    // Every reply is delivered twice: at most one claim wins.
                    let first = t.claim(0, id, 1).is_ok();
                    let second = t.claim(0, id, 1).is_ok();
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
    let id = t.insert(&mut a, &entry(1, 1000, 4)).unwrap().id;
    assert_eq!(t.claim_if(0, id, 1, |_| false), Err(ClaimError::Mismatch));
    assert_eq!(t.in_flight(0), 1);
    assert!(t.claim_if(0, id, 1, |e| e.client.port == 40004).is_ok());
}
