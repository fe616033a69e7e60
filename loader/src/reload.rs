//! Reloading the configuration while running (SIGHUP, `xdpdns reload`):
//! [`diff`] refuses a file whose fixed part differs from the running one
//! (naming the keys) and says what the live part changes; the run loop
//! applies it. An invalid or unappliable file changes nothing.

use std::net::SocketAddr;

use xdpdns_common::config::{Config, Fixed, Live};

/// What a reload changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub listen: Option<Vec<SocketAddr>>,
    /// The destinations redirected to AF_XDP changed.
    pub redirected: Option<Vec<SocketAddr>>,
    pub rules: bool,
    pub answer: bool,
    pub queues_added: Vec<u32>,
    pub queues_removed: Vec<u32>,
    /// Settings that take effect as dataplanes (re)start.
    pub on_next_start: Vec<&'static str>,
    pub supervisor: bool,
    /// Backends, pools, health checks or forwarding timeouts changed.
    pub backends: bool,
    /// TCP settings read per connection changed.
    pub tcp: bool,
    /// The new ACL, if it changed (swapped at once in the XDP program).
    pub acl: Option<String>,
    /// xdp.tx_answers changed.
    pub tx_answers: bool,
    /// The new limits and blocks, if they changed (swapped with the ACL).
    pub abuse: Option<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// One line per change, for the log and the CLI.
    pub fn describe(&self) -> Vec<String> {
        if self.is_empty() {
            return vec!["no change".into()];
        }
        let mut out = Vec::new();
        if let Some(l) = &self.listen {
            let list: Vec<String> = l.iter().map(|a| a.to_string()).collect();
            out.push(format!("listen addresses now {}", list.join(", ")));
        }
        if let Some(r) = &self.redirected
            && r.is_empty()
        {
            out.push("AF_XDP redirection off: everything takes the kernel path".into());
        } else if self.redirected.is_some() {
            out.push("AF_XDP redirection updated".into());
        }
        if self.rules {
            out.push("rules replaced (a rule kept keeps its counters)".into());
        } else if self.answer {
            out.push("answer settings updated".into());
        }
        if !self.queues_added.is_empty() {
            out.push(format!("queues started: {:?}", self.queues_added));
        }
        if !self.queues_removed.is_empty() {
            out.push(format!(
                "queues stopped (kernel path): {:?}",
                self.queues_removed
            ));
        }
        if self.supervisor {
            out.push("supervisor settings updated".into());
        }
        if self.backends {
            out.push("backends, pools, health checks and forwarding timeouts updated (queries in flight to kept backends are still answered)".into());
        }
        if self.tcp {
            out.push("TCP limits updated (new connections)".into());
        }
        if let Some(acl) = &self.acl {
            out.push(format!("ACL replaced: {acl}"));
        }
        if self.tx_answers {
            out.push("xdp.tx_answers updated".into());
        }
        if let Some(a) = &self.abuse {
            out.push(format!("limits and blocks replaced: {a}"));
        }
        for s in &self.on_next_start {
            out.push(format!("{s} applies to dataplanes started from now on (`xdpdns restart-queue` applies it now)"));
        }
        out
    }
}

/// Compares the running instance (`fixed`, `old`) with a new file. A change
/// of the fixed part is refused with a message naming what needs a restart.
pub fn diff(
    fixed: &Fixed,
    old: &Live,
    new: &Config,
    device_queues: u32,
) -> Result<Changes, String> {
    let keys = fixed.differences(&new.fixed);
    if !keys.is_empty() {
        return Err(format!(
            "{} cannot change while running: restart xdpdns to apply (the running configuration is unchanged)",
            keys.join(", ")
        ));
    }
    let new = &new.live;
    let mut c = Changes::default();
    if old.listen != new.listen {
        c.listen = Some(new.listen.clone());
    }
    if old.redirected() != new.redirected() {
        c.redirected = Some(new.redirected());
    }
    c.rules = old.rule != new.rule;
    if old.acl != new.acl {
        c.acl = Some(new.acl.describe());
    }
    if old.abuse != new.abuse {
        c.abuse = Some(new.abuse.describe());
    }
    c.tx_answers = old.xdp.tx_answers != new.xdp.tx_answers;
    c.answer = c.rules || old.answer_spec() != new.answer_spec();
    let old_q = old.xdp.queues.resolve(device_queues)?;
    let new_q = new
        .xdp
        .queues
        .resolve(device_queues)
        .map_err(|e| format!("xdp.queues: {e}"))?;
    c.queues_added = new_q
        .iter()
        .filter(|q| !old_q.contains(q))
        .copied()
        .collect();
    c.queues_removed = old_q
        .iter()
        .filter(|q| !new_q.contains(q))
        .copied()
        .collect();
    if old.xsk.batch_size != new.xsk.batch_size {
        c.on_next_start.push("xsk.batch_size");
    }
    if old.xsk.idle_nap_us != new.xsk.idle_nap_us {
        c.on_next_start.push("xsk.idle_nap_us");
    }
    if old.dataplane.cpus != new.dataplane.cpus {
        c.on_next_start.push("dataplane.cpus");
    }
    if old.dataplane.stats_interval_ms != new.dataplane.stats_interval_ms {
        c.on_next_start.push("dataplane.stats_interval_ms");
    }
    c.supervisor = old.supervisor != new.supervisor;
    let (of, nf) = (&old.forwarding, &new.forwarding);
    c.backends = old.backend != new.backend
        || old.pool != new.pool
        || (of.timeout_ms, of.timeout_action, of.all_down_action)
            != (nf.timeout_ms, nf.timeout_action, nf.all_down_action);
    c.tcp = old.tcp != new.tcp;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(a: &Config, b: &Config, queues: u32) -> Result<Changes, String> {
        super::diff(&a.fixed, &a.live, b, queues)
    }

    fn cfg(extra_xdp: &str, body: &str) -> Config {
        Config::from_toml(&format!(
            "[xdp]\ninterface = \"eth0\"\n{extra_xdp}\n[[listen]]\naddress = \"192.0.2.1:53\"\n{body}"
        ))
        .unwrap()
    }

    #[test]
    fn identical_configurations_change_nothing() {
        let a = cfg("", "");
        let c = diff(&a, &a.clone(), 2).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.describe(), ["no change"]);
    }

    #[test]
    fn listen_rules_and_queues_apply_live() {
        let a = cfg("queues = [0]", "");
        let b = cfg(
            "queues = [1]",
            "[[listen]]\naddress = \"[2001:db8::1]:53\"\n[[rule]]\nqtype = \"A\"\naction = \"drop\"\n",
        );
        let c = diff(&a, &b, 2).unwrap();
        assert_eq!(c.listen.as_ref().unwrap().len(), 2);
        assert!(c.rules && c.answer);
        assert_eq!(c.queues_added, [1]);
        assert_eq!(c.queues_removed, [0]);
    }

    #[test]
    fn fixed_settings_are_refused_with_restart_advice() {
        let a = cfg("", "");
        for (xdp, body, key) in [
            ("mode = \"generic\"", "", "xdp.mode"),
            ("pin_root = \"/sys/fs/bpf/other\"", "", "xdp.pin_root"),
            ("", "[xsk]\nframe_size = 4096", "xsk.frame_size"),
            ("", "[dataplane]\nuser = \"daemon\"", "dataplane.user"),
        ] {
            let e = diff(&a, &cfg(xdp, body), 2).unwrap_err();
            assert!(e.contains(key) && e.contains("restart"), "{e}");
        }
        let mut other = a.clone();
        other.fixed.xdp.interface = "eth1".into();
        assert!(diff(&a, &other, 2).unwrap_err().contains("xdp.interface"));
    }

    const ONE: &str = "[[backend]]\naddress = \"192.0.2.10:53\"\n";
    const TWO: &str = "[[backend]]\naddress = \"192.0.2.10:53\"\n[[backend]]\naddress = \"192.0.2.11:53\"\nweight = 3\n";

    #[test]
    fn backends_pools_health_and_timeouts_apply_live() {
        let a = cfg("", ONE);
        for body in [
            TWO.to_string(),
            format!("{ONE}[backend.health]\ninterval_ms = 250\n"),
            format!("{ONE}[[pool]]\nname = \"default\"\npolicy = \"least-outstanding\"\n"),
            format!("{ONE}[forwarding]\ntimeout_ms = 500\ntimeout_action = \"servfail\"\n"),
        ] {
            let c = diff(&a, &cfg("", &body), 2).unwrap();
            assert!(c.backends, "{body}");
            assert!(!c.answer && c.listen.is_none(), "{body}");
            assert!(c.describe()[0].contains("backends"), "{body}");
        }
        let c = diff(
            &a,
            &cfg("", &format!("{ONE}[tcp]\nidle_timeout_ms = 900\n")),
            2,
        )
        .unwrap();
        assert!(c.tcp && !c.backends, "read per connection: nothing to push");
    }

    #[test]
    fn forwarding_resources_are_fixed_while_running() {
        let a = cfg("", ONE);
        for (body, key) in [
            ("", "turning forwarding on or off"),
            ("[forwarding]\nport_base = 31000\n", "forwarding.port_base"),
            (
                "[forwarding]\nmax_in_flight = 1024\n",
                "forwarding.max_in_flight",
            ),
            ("[forwarding]\nports = 512\n", "forwarding.ports"),
        ] {
            let body = if body.is_empty() {
                String::new()
            } else {
                format!("{ONE}{body}")
            };
            let e = diff(&a, &cfg("", &body), 2).unwrap_err();
            assert!(e.contains(key) && e.contains("restart"), "{e}");
        }
        let e = diff(&cfg("", ""), &a, 2).unwrap_err();
        assert!(e.contains("turning forwarding on"), "{e}");
    }

    #[test]
    fn turning_redirection_off_empties_the_redirected_set() {
        let a = cfg("", "");
        let b = cfg("redirect = false", "");
        let c = diff(&a, &b, 2).unwrap();
        assert_eq!(c.redirected, Some(vec![]));
        assert!(c.listen.is_none());
        assert!(c.describe()[0].contains("kernel path"));
        assert_eq!(diff(&b, &a, 2).unwrap().redirected.unwrap().len(), 1);
    }

    #[test]
    fn the_acl_and_tx_answers_change_live_and_say_so() {
        let a = cfg("", "");
        let b = cfg(
            "tx_answers = \"never\"",
            "[acl]\nallow = [\"0.0.0.0/0\"]\naction = \"refused\"\n",
        );
        let c = diff(&a, &b, 2).unwrap();
        assert!(c.tx_answers);
        let lines = c.describe().join("\n");
        assert!(
            lines.contains("ACL replaced: 0.0.0.0/0 (others: REFUSED)"),
            "{lines}"
        );
        assert!(lines.contains("xdp.tx_answers"), "{lines}");
        assert!(diff(&a, &a, 2).unwrap().acl.is_none());
    }

    #[test]
    fn queue_ids_beyond_the_device_are_refused() {
        let a = cfg("", "");
        let e = diff(&a, &cfg("queues = [5]", ""), 2).unwrap_err();
        assert!(e.contains("queue 5 does not exist"), "{e}");
    }

    #[test]
    fn dataplane_tunables_are_reported_for_the_next_start() {
        let a = cfg("", "");
        let b = cfg("", "[dataplane]\nstats_interval_ms = 500");
        let c = diff(&a, &b, 2).unwrap();
        assert_eq!(c.on_next_start, ["dataplane.stats_interval_ms"]);
        assert!(c.describe()[0].contains("restart-queue"));
    }
}
