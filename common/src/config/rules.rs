//! Local answer rules: `[[rule]]` in the file, [`AnswerSpec`] on the wire to
//! the dataplanes.

use serde::{Deserialize, Serialize};

use crate::dns::{self, Rcode};

/// What to do with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Refused,
    NxDomain,
    ServFail,
    /// NOERROR without records (NODATA).
    NoError,
    NotImp,
    /// Send nothing back.
    Drop,
    /// Send it to the default pool (the default action when backends exist).
    Forward,
}

impl Action {
    /// The response code this action answers with, `None` for [`Action::Drop`].
    pub fn rcode(self) -> Option<Rcode> {
        match self {
            Action::Refused => Some(Rcode::Refused),
            Action::NxDomain => Some(Rcode::NxDomain),
            Action::ServFail => Some(Rcode::ServFail),
            Action::NoError => Some(Rcode::NoError),
            Action::NotImp => Some(Rcode::NotImp),
            Action::Drop | Action::Forward => None,
        }
    }
}

/// One `[[rule]]`: all given conditions must hold.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Matches this name and every name below it, case-insensitively.
    #[serde(default)]
    pub qname_suffix: Option<String>,
    /// A record type: "AAAA", "TYPE65", ...
    #[serde(default)]
    pub qtype: Option<String>,
    /// An opcode: "query", "iquery", "status", "notify", "update", "dso",
    /// or its number 0–15.
    #[serde(default)]
    pub opcode: Option<String>,
    pub action: Action,
    /// With `action = "forward"`: the pool (default: "default").
    #[serde(default)]
    pub pool: Option<String>,
}

/// A compiled rule as the dataplane evaluates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    /// Lower-case wire-format suffix, e.g. `\x07example\x00`.
    pub suffix: Option<Vec<u8>>,
    pub qtype: Option<u16>,
    #[serde(default)]
    pub opcode: Option<u8>,
    pub action: Action,
    /// The pool a forwarding rule sends to, by name.
    #[serde(default)]
    pub pool: Option<String>,
}

/// Opcodes by name (RFC 6895 §2.2).
const OPCODE_NAMES: &[(&str, u8)] = &[
    ("query", 0),
    ("iquery", 1),
    ("status", 2),
    ("notify", 4),
    ("update", 5),
    ("dso", 6),
];

/// The opcode `name` denotes: a mnemonic (any case) or a number 0–15.
pub fn opcode_from_name(name: &str) -> Option<u8> {
    let lower = name.to_ascii_lowercase();
    OPCODE_NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, v)| *v)
        .or_else(|| name.parse::<u8>().ok().filter(|v| *v <= 15))
}

/// Everything a dataplane needs to answer locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerSpec {
    pub rules: Vec<RuleSpec>,
    /// The action when no rule matches.
    pub default: Action,
    /// UDP payload size advertised in our OPT records.
    pub edns_udp_size: u16,
    /// Who may be answered on the kernel path and over TCP (AF_XDP frames
    /// were judged by the XDP program already).
    pub acl: crate::config::Acl,
    /// Answers tallied per client for the dynamic block rules, if any.
    #[serde(default)]
    pub tally: Option<crate::config::TallySpec>,
}

impl RuleConfig {
    /// A stable label for metrics and status: what the rule matches and does.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.qname_suffix {
            parts.push(format!("suffix={}", s.to_ascii_lowercase()));
        }
        if let Some(t) = &self.qtype {
            parts.push(format!("qtype={}", t.to_ascii_uppercase()));
        }
        if let Some(o) = &self.opcode {
            parts.push(format!("opcode={}", o.to_ascii_lowercase()));
        }
        parts.push(format!("action={}", self.action.name()));
        if let Some(p) = &self.pool {
            parts.push(format!("pool={p}"));
        }
        parts.join(",")
    }
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Refused => "refused",
            Action::NxDomain => "nxdomain",
            Action::ServFail => "servfail",
            Action::NoError => "noerror",
            Action::NotImp => "notimp",
            Action::Drop => "drop",
            Action::Forward => "forward",
        }
    }
}

/// Checks one rule; `index` is its position for the error's key.
pub(super) fn check(index: usize, rule: &RuleConfig) -> Result<(), super::ConfigError> {
    let key = |field: &str| format!("rule[{index}].{field}");
    if let Some(name) = &rule.qname_suffix {
        dns::name_to_wire(name).map_err(|e| super::ConfigError::invalid(key("qname_suffix"), e))?;
    }
    if let Some(qtype) = &rule.qtype
        && dns::qtype_from_name(qtype).is_none()
    {
        return Err(super::ConfigError::invalid(
            key("qtype"),
            format!(
                "{qtype:?} is not a record type: write a mnemonic such as \"AAAA\" or \"TYPE65\""
            ),
        ));
    }
    if let Some(op) = &rule.opcode
        && opcode_from_name(op).is_none()
    {
        return Err(super::ConfigError::invalid(
            key("opcode"),
            format!(
                "{op:?} is not an opcode: write query, iquery, status, notify, update, dso or a number 0-15"
            ),
        ));
    }
    Ok(())
}

/// Compiles validated rules. Call only on a validated configuration.
pub(super) fn compile(
    rules: &[RuleConfig],
    edns_udp_size: u16,
    forward: bool,
    acl: &crate::config::Acl,
) -> AnswerSpec {
    AnswerSpec {
        rules: rules
            .iter()
            .map(|r| RuleSpec {
                suffix: r
                    .qname_suffix
                    .as_deref()
                    .and_then(|n| dns::name_to_wire(n).ok()),
                qtype: r.qtype.as_deref().and_then(dns::qtype_from_name),
                opcode: r.opcode.as_deref().and_then(opcode_from_name),
                action: r.action,
                pool: r.pool.clone(),
            })
            .collect(),
        default: if forward {
            Action::Forward
        } else {
            Action::Refused
        },
        edns_udp_size,
        acl: acl.clone(),
        tally: None,
    }
}
