//! The rule list: first match wins, else the default action.

use xdpdns_common::config::{Action, AnswerSpec};

use crate::dns::Query;

struct Rule {
    suffix: Option<Box<[u8]>>,
    qtype: Option<u16>,
    opcode: Option<u8>,
    action: Action,
    /// A forwarding rule's pool, as an index into the forward spec's pools.
    pool: Option<u16>,
}

/// Compiled rules, evaluated first match wins.
pub struct Rules {
    rules: Vec<Rule>,
    default: Action,
}

impl Rules {
    /// The rules of `spec`; forwarding rules' pools are looked up by name
    /// in `pools` (the forward spec's, in order).
    pub fn new(spec: &AnswerSpec, pools: &[&str]) -> Self {
        Rules {
            rules: spec
                .rules
                .iter()
                .map(|r| Rule {
                    suffix: r.suffix.clone().map(Vec::into_boxed_slice),
                    qtype: r.qtype,
                    opcode: r.opcode,
                    action: r.action,
                    pool: r
                        .pool
                        .as_deref()
                        .and_then(|n| pools.iter().position(|p| *p == n))
                        .map(|i| i as u16),
                })
                .collect(),
            default: spec.default,
        }
    }

    /// The pool rule `rule` forwards to, if it names one.
    pub fn pool_of(&self, rule: usize) -> Option<u16> {
        self.rules.get(rule).and_then(|r| r.pool)
    }

    /// Number of rules plus one for the default.
    pub fn slots(&self) -> usize {
        self.rules.len() + 1
    }

    /// The matching rule's index (`rules.len()` for the default) and its action.
    #[inline]
    pub fn decide(&self, msg: &[u8], q: &Query) -> (usize, Action) {
        let qname = q.qname(msg);
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.qtype.is_some_and(|t| t != q.qtype) {
                continue;
            }
            if rule.opcode.is_some_and(|o| o != q.opcode) {
                continue;
            }
            if rule
                .suffix
                .as_deref()
                .is_some_and(|s| !name_has_suffix(qname, s))
            {
                continue;
            }
            return (i, rule.action);
        }
        (self.rules.len(), self.default)
    }
}

/// Whether wire-format `name` equals or lies below the lower-case wire-format
/// `suffix`, comparing case-insensitively on label boundaries. `name` must be
/// a validated, uncompressed name.
fn name_has_suffix(name: &[u8], suffix: &[u8]) -> bool {
    let Some(start) = name.len().checked_sub(suffix.len()) else {
        return false;
    };
    let mut at = 0;
    while at < start {
        at += 1 + usize::from(name[at]);
    }
    // Length octets are at most 63 and ASCII-lowercasing leaves them unchanged.
    at == start
        && name[start..]
            .iter()
            .zip(suffix)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{parse_query, testing::query};
    use xdpdns_common::config::RuleSpec;
    use xdpdns_common::dns::name_to_wire;

    fn rules(list: &[(Option<&str>, Option<u16>, Action)]) -> Rules {
        Rules::new(
            &AnswerSpec {
                rules: list
                    .iter()
                    .map(|(s, t, a)| RuleSpec {
                        suffix: s.map(|s| name_to_wire(s).unwrap()),
                        qtype: *t,
                        opcode: None,
                        action: *a,
                        pool: None,
                    })
                    .collect(),
                default: Action::Refused,
                edns_udp_size: 1232,
                acl: crate::testing::open_acl(),
                tally: None,
            },
            &[],
        )
    }

    fn decide(r: &Rules, name: &str, qtype: u16) -> Action {
        let msg = query(1, name, qtype, None);
        let q = parse_query(&msg).unwrap();
        r.decide(&msg, &q).1
    }

    #[test]
    fn suffix_matching_respects_label_boundaries_and_case() {
        let w = |s| name_to_wire(s).unwrap();
        assert!(name_has_suffix(&w("www.Example.com."), &w("example.com.")));
        assert!(name_has_suffix(&w("EXAMPLE.com."), &w("example.com.")));
        assert!(!name_has_suffix(&w("badexample.com."), &w("example.com.")));
        assert!(!name_has_suffix(&w("com."), &w("example.com.")));
        assert!(name_has_suffix(&w("anything."), &w(".")));
        assert!(name_has_suffix(&w("."), &w(".")));
    }

    #[test]
    fn first_match_wins_then_default() {
        let r = rules(&[
            (Some("blocked.test."), None, Action::NxDomain),
            (None, Some(28), Action::NoError),
            (Some("test."), Some(1), Action::Drop),
        ]);
        assert_eq!(decide(&r, "a.blocked.test.", 28), Action::NxDomain);
        assert_eq!(decide(&r, "other.example.", 28), Action::NoError);
        assert_eq!(decide(&r, "x.test.", 1), Action::Drop);
        assert_eq!(decide(&r, "x.test.", 16), Action::Refused);
        assert_eq!(decide(&rules(&[]), "x.", 1), Action::Refused);
        let msg = query(1, "x.test.", 16, None);
        assert_eq!(
            r.decide(&msg, &parse_query(&msg).unwrap()).0,
            3,
            "default is the last slot"
        );
    }
}
