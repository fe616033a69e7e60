use super::*;
use crate::dns::parse_query;
use crate::dns::testing::query;

const NOW: u64 = 1_000_000;

/// The backend's answer to `q`: its header and question, then one A
/// record for the name (TTL `ttl`), with the flags of an answer.
fn answer_to(q: &[u8], ttl: u32) -> Vec<u8> {
    let p = parse_query(q).unwrap();
    let mut m = q[..p.question_end].to_vec();
    m[2] |= 0x80;
    m[3] = 0x80;
    m[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    m.extend_from_slice(&ttl.to_be_bytes());
    m.extend_from_slice(&[0, 4, 192, 0, 2, 7]);
    m
}

fn cache() -> Cache {
    Cache::anonymous(64, (11, 22)).unwrap()
}

fn store(c: &Cache, q: &[u8], ttl: u32, now: u64) -> Result<Stored, NotStored> {
    let p = parse_query(q).unwrap();
    let a = answer_to(q, ttl);
    c.insert(
        &a,
        p.qname_end,
        p.question_end,
        Variant::of(&p, 0),
        ttl,
        now,
    )
}

fn ask(c: &Cache, q: &[u8], now: u64, stale_ms: u64) -> Result<(Hit, Vec<u8>), Miss> {
    let p = parse_query(q).unwrap();
    let mut buf = q.to_vec();
    buf.resize(1500, 0);
    let hit = c.lookup(&mut buf, &p, Variant::of(&p, 0), 1232, now, stale_ms)?;
    buf.truncate(hit.len);
    Ok((hit, buf))
}

fn ttl_of(m: &[u8]) -> u32 {
    let n = m.len();
    u32::from_be_bytes(m[n - 10..n - 6].try_into().unwrap())
}

#[test]
fn a_hit_keeps_the_querys_id_and_case_and_ages_the_ttl() {
    let c = cache();
    assert_eq!(
        ask(&c, &query(1, "www.example.test", 1, None), NOW, 0),
        Err(Miss::Absent)
    );
    assert_eq!(
        store(&c, &query(1, "www.example.test", 1, None), 300, NOW),
        Ok(Stored::Fresh)
    );
    let mut q = query(0xbeef, "www.example.test", 1, None);
    for i in [13, 15, 18, 20, 27] {
        q[i] = q[i].to_ascii_uppercase();
    }
    assert_ne!(q[12..30], query(1, "www.example.test", 1, None)[12..30]);
    let (hit, a) = ask(&c, &q, NOW + 20_500, 0).unwrap();
    assert!(!hit.stale);
    assert_eq!(&a[..2], &[0xbe, 0xef], "the query's ID");
    assert_eq!(&a[12..30], &q[12..30], "the query's question, case and all");
    assert_eq!(a[3] & 0x0f, 0);
    assert_eq!(ttl_of(&a), 280, "aged by 20 s");
    // Another type, another name: misses.
    assert_eq!(
        ask(&c, &query(2, "www.example.test", 28, None), NOW, 0),
        Err(Miss::Absent)
    );
    assert_eq!(
        ask(&c, &query(2, "ww.example.test", 1, None), NOW, 0),
        Err(Miss::Absent)
    );
}

#[test]
fn variants_are_kept_apart() {
    let c = cache();
    let plain = query(1, "a.test", 1, Some((1232, 0, false)));
    let dnssec = query(1, "a.test", 1, Some((1232, 0, true)));
    let no_edns = query(1, "a.test", 1, None);
    store(&c, &plain, 60, NOW).unwrap();
    assert!(ask(&c, &plain, NOW, 0).is_ok());
    assert_eq!(ask(&c, &dnssec, NOW, 0), Err(Miss::Absent), "DO");
    assert_eq!(ask(&c, &no_edns, NOW, 0), Err(Miss::Absent), "no EDNS");
    let mut rd = plain.clone();
    rd[2] ^= 0x01;
    assert_eq!(ask(&c, &rd, NOW, 0), Err(Miss::Absent), "RD");
    let p = parse_query(&plain).unwrap();
    assert_ne!(Variant::of(&p, 0), Variant::of(&p, 1), "pool");
    let big = query(1, "a.test", 1, Some((4096, 0, false)));
    assert_ne!(
        Variant::of(&parse_query(&big).unwrap(), 0),
        Variant::of(&p, 0),
        "payload size class"
    );
}

#[test]
fn expiry_stale_serving_and_purge() {
    let c = cache();
    let q = query(1, "s.test", 1, None);
    store(&c, &q, 10, NOW).unwrap();
    assert!(ask(&c, &q, NOW + 9_999, 0).is_ok());
    assert_eq!(ask(&c, &q, NOW + 10_000, 0), Err(Miss::Expired));
    let (hit, a) = ask(&c, &q, NOW + 15_000, 30_000).unwrap();
    assert!(hit.stale);
    assert_eq!(ttl_of(&a), 0, "stale answers have TTL 0");
    assert_eq!(ask(&c, &q, NOW + 40_000, 30_000), Err(Miss::Expired));
    store(&c, &q, 10, NOW).unwrap();
    c.purge_all();
    assert_eq!(ask(&c, &q, NOW, 0), Err(Miss::Absent));
    assert_eq!(
        store(&c, &q, 10, NOW),
        Ok(Stored::Fresh),
        "purged entries are free"
    );
}

#[test]
fn too_large_answers_are_neither_stored_nor_served_beyond_the_room() {
    let c = cache();
    let q = query(1, "big.test", 1, None);
    let p = parse_query(&q).unwrap();
    let mut a = answer_to(&q, 60);
    a.resize(MAX_RESPONSE + 1, 0);
    assert_eq!(
        c.insert(&a, p.qname_end, p.question_end, Variant::of(&p, 0), 60, NOW),
        Err(NotStored::TooLarge)
    );
    store(&c, &q, 60, NOW).unwrap();
    let mut buf = q.clone();
    buf.resize(1500, 0);
    assert_eq!(
        c.lookup(&mut buf, &p, Variant::of(&p, 0), 20, NOW, 0),
        Err(Miss::TooLarge),
        "larger than the client takes"
    );
}

#[test]
fn a_full_bucket_evicts_the_entry_closest_to_expiry() {
    // 4 entries: one bucket.
    let c = Cache::anonymous(4, (1, 2)).unwrap();
    let names: Vec<Vec<u8>> = (0..5)
        .map(|i| query(1, &format!("n{i}.test"), 1, None))
        .collect();
    for (i, q) in names[..4].iter().enumerate() {
        assert_eq!(store(&c, q, 100 + i as u32, NOW), Ok(Stored::Fresh));
    }
    assert_eq!(store(&c, &names[4], 500, NOW), Ok(Stored::Evicted));
    assert_eq!(
        ask(&c, &names[0], NOW, 0),
        Err(Miss::Absent),
        "the soonest to expire went"
    );
    for q in &names[1..] {
        assert!(ask(&c, q, NOW, 0).is_ok());
    }
    // Re-storing a key replaces its own entry.
    assert_eq!(store(&c, &names[4], 50, NOW), Ok(Stored::Fresh));
}

#[test]
fn hostile_contents_are_never_served_nor_crash_the_reader() {
    let c = Cache::anonymous(4, (1, 2)).unwrap();
    let q = query(7, "h.test", 1, None);
    store(&c, &q, 60, NOW).unwrap();
    let words = c.region.words();
    let entry = |k: usize| &words[HEADER_WORDS + k];
    // Find the stored entry (any of the 4 ways).
    let way = (0..WAYS)
        .find(|w| entry(w * SLOT_WORDS).load(Ordering::Relaxed) != 0)
        .unwrap();
    let at = |k: usize| entry(way * SLOT_WORDS + k);
    let good: Vec<u64> = (0..SLOT_WORDS)
        .map(|k| at(k).load(Ordering::Relaxed))
        .collect();
    let restore = || {
        for (k, v) in good.iter().enumerate() {
            at(k).store(*v, Ordering::Relaxed);
        }
    };
    // A length past the entry, or shorter than the question.
    for len in [u64::from(u16::MAX), MAX_RESPONSE as u64 + 8, 5] {
        at(2).store((good[2] & 0xffff_ffff) | (len << 32), Ordering::Relaxed);
        assert!(ask(&c, &q, NOW, 0).is_err(), "length {len}");
        restore();
    }
    // Another question under the right hash: a collision, not an answer.
    let other = answer_to(&query(7, "x.test", 1, None), 60);
    for (k, chunk) in other.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        at(ENTRY_HEADER_WORDS + k).store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    assert_eq!(ask(&c, &q, NOW, 0), Err(Miss::Collision));
    restore();
    // Being written (odd): not read.
    at(0).store(good[0] | 1, Ordering::Relaxed);
    assert_eq!(ask(&c, &q, NOW, 0), Err(Miss::Collision));
    restore();
    // Random words everywhere: misses or answers to this question only.
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..2000 {
        for k in 0..SLOT_WORDS {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = if k == 0 {
                x & !1
            } else if k == 1 {
                good[1]
            } else {
                x
            };
            at(k).store(v, Ordering::Relaxed);
        }
        at(2).store(
            (good[2] & 0xffff_ffff) | ((x >> 40) << 32),
            Ordering::Relaxed,
        );
        at(5).store(good[5], Ordering::Relaxed);
        if let Ok((_, a)) = ask(&c, &q, NOW, u64::MAX) {
            assert_eq!(&a[..2], &[0, 7]);
            assert_eq!(&a[12..a.len().min(24)], &q[12..a.len().min(24)]);
        }
    }
}

#[test]
fn readers_and_writers_in_parallel_only_ever_see_whole_answers() {
    let c = std::sync::Arc::new(Cache::anonymous(4, (3, 4)).unwrap());
    let q = query(9, "race.test", 1, None);
    store(&c, &q, 60, NOW).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (c, q, stop) = (c.clone(), q.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ttl = 1;
            while !stop.load(Ordering::Relaxed) {
                let _ = store(&c, &q, ttl, NOW);
                ttl = ttl % 1000 + 1;
            }
        })
    };
    let mut hits = 0;
    for _ in 0..20_000 {
        if let Ok((_, a)) = ask(&c, &q, NOW, 0) {
            // The TTL written is the one the entry was stored with.
            let t = ttl_of(&a);
            assert!((1..=1000).contains(&t), "{t}");
            assert_eq!(a.len(), answer_to(&q, 1).len());
            hits += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(hits > 0);
}

#[test]
fn purges_remove_a_name_a_type_or_a_subtree() {
    let c = cache();
    let wire = |n: &str| xdpdns_common::dns::name_to_wire(n).unwrap();
    let names = [
        ("a.zone.test", 1),
        ("a.zone.test", 28),
        ("b.a.zone.test", 1),
        ("zone.test", 1),
        ("xzone.test", 1),
    ];
    let fill = || {
        for (n, t) in names {
            store(&c, &query(1, n, t, None), 60, NOW).unwrap();
        }
    };
    let present = || -> Vec<bool> {
        names
            .iter()
            .map(|(n, t)| ask(&c, &query(1, n, *t, None), NOW, 0).is_ok())
            .collect()
    };
    fill();
    assert_eq!(present(), [true; 5]);
    assert_eq!(c.purge(&wire("A.Zone.Test"), Some(28), false), 1);
    assert_eq!(present(), [true, false, true, true, true]);
    assert_eq!(c.purge(&wire("a.zone.test"), None, false), 1);
    assert_eq!(present(), [false, false, true, true, true]);
    fill();
    assert_eq!(c.purge(&wire("zone.test"), None, true), 4, "not xzone.test");
    assert_eq!(present(), [false, false, false, false, true]);
    assert_eq!(c.purge(&wire("."), None, true), 1, "the root: everything");
    assert_eq!(present(), [false; 5]);
}
