//! The backends a pipeline forwards to: pools with their policies, each
//! backend's health (pushed by the loader) and the queries this dataplane
//! has outstanding with it.

use xdpdns_common::config::FailAction;
use xdpdns_common::ipc::{BackendLive, ForwardSpec};

use super::policy::Pool;

pub struct Backends {
    pools: Vec<Pool>,
    default_pool: u16,
    live: Vec<BackendLive>,
    outstanding: Vec<u32>,
    /// Each backend's stable tag (its identity across reloads).
    tags: Vec<u16>,
    all_down: FailAction,
}

impl Backends {
    pub fn new(spec: &ForwardSpec) -> Backends {
        let pools = spec
            .pools
            .iter()
            .map(|p| {
                let members: Vec<(u16, u32, String)> = p
                    .members
                    .iter()
                    .filter_map(|m| {
                        let b = spec.backends.get(usize::from(*m))?;
                        Some((*m, b.weight, b.address.to_string()))
                    })
                    .collect();
                Pool::new(p.policy, &members)
            })
            .collect();
        let n = spec.backends.len();
        let mut live = spec.live.clone();
        live.resize(
            n,
            BackendLive {
                up: false,
                mac: None,
            },
        );
        Backends {
            pools,
            default_pool: spec.default_pool,
            live,
            outstanding: vec![0; n],
            tags: spec.backends.iter().map(|b| b.tag).collect(),
            all_down: spec.all_down_action,
        }
    }

    /// Carries over what this dataplane had outstanding with backends that
    /// a reconfiguration kept (same tag).
    pub fn take_over(&mut self, old: &Backends) {
        for (i, tag) in self.tags.iter().enumerate() {
            if let Some(o) = old.index_of(*tag) {
                self.outstanding[i] = old.outstanding[o];
            }
        }
    }

    /// Health and MACs from the loader, in backend order; ignored if the
    /// list does not match ours (a reconfiguration is on its way).
    pub fn set_live(&mut self, live: Vec<BackendLive>) {
        if live.len() == self.live.len() {
            self.live = live;
        }
    }

    pub fn live(&self, backend: u16) -> Option<&BackendLive> {
        self.live.get(usize::from(backend))
    }

    /// A backend of the default pool for `qname`, or `None` if all are down.
    pub fn pick(&mut self, qname: &[u8]) -> Option<u16> {
        self.pick_in(self.default_pool, qname)
    }

    /// A backend of pool `pool` (an index into the spec's pools; an unknown
    /// one is the default pool) for `qname`, or `None` if all are down.
    pub fn pick_in(&mut self, pool: u16, qname: &[u8]) -> Option<u16> {
        let (live, outstanding) = (&self.live, &self.outstanding);
        let at = if usize::from(pool) < self.pools.len() {
            pool
        } else {
            self.default_pool
        };
        let pool = self.pools.get_mut(usize::from(at))?;
        pool.pick(
            qname,
            |b| live.get(usize::from(b)).is_some_and(|l| l.up),
            |b| outstanding.get(usize::from(b)).copied().unwrap_or(0),
        )
    }

    /// What to answer when every backend of the pool is down.
    pub fn all_down_action(&self) -> FailAction {
        self.all_down
    }

    pub fn sent(&mut self, backend: u16) {
        if let Some(o) = self.outstanding.get_mut(usize::from(backend)) {
            *o += 1;
        }
    }

    /// Queries to `backend` not yet seen answered, timed out or given up.
    pub fn outstanding(&self, backend: u16) -> u32 {
        self.outstanding
            .get(usize::from(backend))
            .copied()
            .unwrap_or(0)
    }

    /// A query to `backend` was answered, timed out or was given up.
    pub fn done(&mut self, backend: u16) {
        if let Some(o) = self.outstanding.get_mut(usize::from(backend)) {
            *o = o.saturating_sub(1);
        }
    }

    /// The index of the backend with table tag `tag`.
    pub fn index_of(&self, tag: u16) -> Option<usize> {
        self.tags.iter().position(|t| *t == tag)
    }

    pub fn tag(&self, backend: u16) -> Option<u16> {
        self.tags.get(usize::from(backend)).copied()
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }
}
