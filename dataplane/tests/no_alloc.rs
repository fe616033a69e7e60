//! The answer path allocates nothing: a counting global allocator sees no
//! allocation across thousands of answers and drops of every kind.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use xdpdns_common::config::{Action, AnswerSpec, RuleSpec};
use xdpdns_dataplane::answer::Answerer;
use xdpdns_dataplane::testing::{FrameSpec, build, query};

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

#[test]
fn answering_allocates_nothing() {
    let mut a = Answerer::new(&AnswerSpec {
        rules: vec![RuleSpec {
            suffix: Some(xdpdns_common::dns::name_to_wire("blocked.example.").unwrap()),
            qtype: Some(1),
            action: Action::Drop,
        }],
        default: Action::Refused,
        edns_udp_size: 1232,
        verify_checksums: true,
    });
    let mut vlan = FrameSpec::v6();
    vlan.vlan = Some(7);
    let frames = [
        build(&FrameSpec::v4(), &query(1, "www.example.com.", 1, None)),
        build(
            &FrameSpec::v4(),
            &query(2, "x.example.", 16, Some((4096, 0, true))),
        ),
        build(&vlan, &query(3, "y.example.", 28, Some((1232, 1, false)))),
        build(&FrameSpec::v4(), &query(4, "a.blocked.example.", 1, None)),
        build(&FrameSpec::v4(), &[0u8; 5]),
    ];
    let mut buf = vec![0u8; 1792];
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut answered = 0;
    for i in 0..10_000 {
        let f = &frames[i % frames.len()];
        buf[..f.len()].copy_from_slice(f);
        answered += usize::from(a.answer_frame(&mut buf, f.len()).is_ok());
        let n = f.len() - 42;
        buf[..n].copy_from_slice(&f[42..]);
        let _ = a.answer_message(&mut buf, n);
    }
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed) - before,
        0,
        "allocations on the answer path"
    );
    assert_eq!(answered, 6_000);
}
