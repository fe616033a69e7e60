use super::*;

fn stats(received: u64) -> QueueEvent {
    let mut c = DataplaneCounters::new();
    c.xsk.received = received;
    c.rule_hits = vec![received];
    QueueEvent::Stats {
        queue: 3,
        counters: Box::new(c),
    }
}

#[test]
fn a_dataplane_life_is_tracked_and_totals_stay_monotonic() {
    let mut q = QueueState::new();
    assert_eq!(
        q.apply(QueueEvent::Started { queue: 3, pid: 42 }),
        Notice::None
    );
    assert_eq!(q.pid, Some(42));
    assert_eq!(
        q.apply(QueueEvent::Registered {
            queue: 3,
            zero_copy: false
        }),
        Notice::Registered(3)
    );
    assert!(q.registered_at.is_some());
    q.apply(stats(10));
    q.apply(stats(25));
    assert_eq!(q.totals().xsk.received, 25, "reports are cumulative");
    assert_eq!(
        q.apply(QueueEvent::Exited {
            queue: 3,
            reason: "killed by signal 9".into(),
            requested: false
        }),
        Notice::Unregistered(3)
    );
    assert_eq!((q.pid, q.restarts), (None, 1));
    assert_eq!(q.last_exit.as_deref(), Some("killed by signal 9"));
    assert!(q.registered_at.is_none());
    assert_eq!(
        q.totals().xsk.received,
        25,
        "the dead one's counters are kept"
    );
    // The next dataplane counts from zero; totals keep growing.
    q.apply(QueueEvent::Started { queue: 3, pid: 43 });
    q.apply(stats(5));
    assert_eq!(q.totals().xsk.received, 30);
    // A replacement on request is a restart but not an exit reason.
    q.apply(QueueEvent::Exited {
        queue: 3,
        reason: "replaced on request".into(),
        requested: true,
    });
    assert_eq!(q.restarts, 2);
    assert_eq!(q.last_exit.as_deref(), Some("killed by signal 9"));
    assert_eq!(
        q.apply(QueueEvent::SetupFailed {
            queue: 3,
            reason: "bind failed: busy".into()
        }),
        Notice::SetupFailed(3, "bind failed: busy".into())
    );
    q.apply(QueueEvent::Phase {
        queue: 3,
        phase: Phase::KernelOnly,
    });
    assert_eq!(q.phase, Phase::KernelOnly);
    q.apply(QueueEvent::Unkillable { queue: 3, pid: 44 });
    assert_eq!(q.unkillable, 1);
    assert_eq!(q.last_exit.as_deref(), Some("pid 44 could not be killed"));
}
