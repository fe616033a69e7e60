//! Rules: `[[rule]]` in the file ([`RuleConfig`]: selectors and an
//! action), compiled to [`AnswerSpec`] for the dataplanes and TCP workers.
//!
//! A rule matches when every selector it gives holds and, if it has a
//! `not` table, not all of the selectors there hold. The first matching
//! rule wins; none matching, the default action applies (forward when
//! backends exist, else REFUSED).

mod compile;
mod names;
mod records;
mod spec;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::dns::Rcode;

pub(super) use compile::{check, check_order, compile, load_files};
pub use names::{MAX_NAME_FILE_BYTES, MAX_NAME_FILE_ENTRIES, NameList, parse_name_file};
pub use records::{SoaSpec, SpoofRecord, TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_SOA, TYPE_TXT};
pub use spec::{AnswerSpec, EdnsMatch, NameEntry, RuleSpec, SelectorSpec, TransportMatch};

/// The issue's configuration contract (#14), with the pool "a" it names:
/// test data for the configuration's tests and the dry run's.
#[doc(hidden)]
pub mod contract {
    /// Two backends: 192.0.2.53 in pool "a", 192.0.2.54 in the default.
    pub const POOLS: &str = "[[backend]]\naddress = \"192.0.2.53:53\"\npool = \"a\"\n\
                             [[backend]]\naddress = \"192.0.2.54:53\"\n[[pool]]\nname = \"a\"\n";
    pub const RULES: &str = r#"[[rule]]
qname_suffix = ["a.test.", "a.example."]
action = "forward"
pool = "a"
[[rule]]
source = ["198.51.100.0/24"]
not = { qtype = "A" }
action = "refused"
[[rule]]
qname = ["spoof.test."]
action = "spoof"
answers = ["A 192.0.2.99", "AAAA 2001:db8::99"]
ttl = 60
aa = true
[[rule]]
qname_suffix = "tc.test."
action = "tc"
[[rule]]
qname_suffix = "gone.test."
action = "nxdomain"
soa = "gone.test. hostmaster.gone.test. 1 3600 600 86400 300"
"#;
}

/// Most rules a configuration holds (the dataplane's per-query candidate
/// sets are sized for it).
pub const MAX_RULES: usize = 1024;

/// What to do with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Refused,
    /// NXDOMAIN; with `soa`, the SOA in the authority section (RFC 2308).
    NxDomain,
    ServFail,
    /// NOERROR without records (NODATA); with `soa`, as for NXDOMAIN.
    #[serde(alias = "nodata")]
    NoError,
    NotImp,
    /// Send nothing back.
    Drop,
    /// Send it to a pool: `pool`, else the default one (the default action
    /// when backends exist).
    Forward,
    /// An empty answer with TC=1, so the client retries over TCP. Matches
    /// UDP queries only: a TCP query goes on to the next rule.
    Tc,
    /// Answer with the rule's `answers`.
    Spoof,
}

impl Action {
    /// The response code this action answers with; `None` for the actions
    /// that do not answer here.
    pub fn rcode(self) -> Option<Rcode> {
        match self {
            Action::Refused => Some(Rcode::Refused),
            Action::NxDomain => Some(Rcode::NxDomain),
            Action::ServFail => Some(Rcode::ServFail),
            Action::NoError | Action::Tc | Action::Spoof => Some(Rcode::NoError),
            Action::NotImp => Some(Rcode::NotImp),
            Action::Drop | Action::Forward => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Refused => "refused",
            Action::NxDomain => "nxdomain",
            Action::ServFail => "servfail",
            Action::NoError => "noerror",
            Action::NotImp => "notimp",
            Action::Drop => "drop",
            Action::Forward => "forward",
            Action::Tc => "tc",
            Action::Spoof => "spoof",
        }
    }
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `edns = true` (an OPT record present), `false` (absent), or a version
/// number (present with that version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EdnsSelector {
    Present(bool),
    Version(u8),
}

/// `transport = "udp"` (AF_XDP frames and kernel-path datagrams) or `"tcp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportSelector {
    Udp,
    Tcp,
}

/// What a query must look like; every selector given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Client address prefixes, v4 or v6: "198.51.100.0/24", "2001:db8::/32".
    #[serde(default)]
    pub source: Option<Vec<String>>,
    /// The listen address (of `[[listen]]`) the query came to.
    #[serde(default)]
    pub listen: Option<Vec<SocketAddr>>,
    /// Exact names, case-insensitively.
    #[serde(default)]
    pub qname: Option<OneOrMany>,
    /// Each name and every name below it, case-insensitively.
    #[serde(default)]
    pub qname_suffix: Option<OneOrMany>,
    /// A file of names, one per line: `example.com` matches that name and
    /// below it, `=example.com` that name only; `#` starts a comment.
    #[serde(default)]
    pub qname_file: Option<PathBuf>,
    /// Record types: "AAAA", "TYPE65", or a list of them.
    #[serde(default)]
    pub qtype: Option<OneOrMany>,
    /// "IN", "CH", "HS", "ANY" or "CLASS<n>".
    #[serde(default)]
    pub qclass: Option<String>,
    /// "query", "iquery", "status", "notify", "update", "dso" or 0–15.
    #[serde(default)]
    pub opcode: Option<String>,
    /// The RD flag.
    #[serde(default)]
    pub rd: Option<bool>,
    /// The DO bit (an OPT record with DO set).
    #[serde(default, rename = "do")]
    pub dnssec_ok: Option<bool>,
    #[serde(default)]
    pub edns: Option<EdnsSelector>,
    /// `[min, max]` bytes of the DNS message, both included.
    #[serde(default)]
    pub query_size: Option<[u16; 2]>,
    #[serde(default)]
    pub transport: Option<TransportSelector>,
    /// The names of `qname_file`, read by the loader (not in the file).
    #[serde(skip)]
    pub file_names: Option<Arc<NameList>>,
}

/// One `[[rule]]`: selectors, an optional `not`, and an action.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RuleConfig {
    #[serde(flatten)]
    pub when: Selector,
    /// Selectors that, all holding, keep the rule from matching.
    #[serde(default)]
    pub not: Option<Selector>,
    pub action: Action,
    /// With `action = "forward"`: the pool (default: "default").
    #[serde(default)]
    pub pool: Option<String>,
    /// With `action = "spoof"`: records, "A 192.0.2.1", "AAAA 2001:db8::1",
    /// "CNAME target.example.", "TXT some text".
    #[serde(default)]
    pub answers: Option<Vec<String>>,
    /// TTL of spoofed records (default 60).
    #[serde(default)]
    pub ttl: Option<u32>,
    /// With `nxdomain`/`nodata`: "MNAME RNAME SERIAL REFRESH RETRY EXPIRE
    /// MINIMUM", answered in the authority section with TTL MINIMUM.
    #[serde(default)]
    pub soa: Option<String>,
    /// The SOA's owner (default: the rule's one `qname_suffix`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Set AA on this rule's local answers.
    #[serde(default)]
    pub aa: bool,
    /// Set RA on this rule's local answers.
    #[serde(default)]
    pub ra: bool,
    /// Keys nothing above took: reported as unknown by validation (serde's
    /// `deny_unknown_fields` does not work beside `flatten`).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

impl RuleConfig {
    /// A stable label for metrics and status: what the rule matches and does.
    pub fn label(&self) -> String {
        let mut parts = self.when.label_parts();
        if let Some(not) = &self.not {
            let inner = not.label_parts().join(",");
            parts.push(format!("not({inner})"));
        }
        parts.push(format!("action={}", self.action.name()));
        if let Some(p) = &self.pool {
            parts.push(format!("pool={p}"));
        }
        parts.join(",")
    }
}

impl Selector {
    fn label_parts(&self) -> Vec<String> {
        let mut parts = Vec::new();
        let list = |v: &OneOrMany| {
            v.as_slice()
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join("|")
        };
        if let Some(s) = &self.source {
            parts.push(format!("source={}", s.join("|")));
        }
        if let Some(l) = &self.listen {
            let l: Vec<String> = l.iter().map(|a| a.to_string()).collect();
            parts.push(format!("listen={}", l.join("|")));
        }
        if let Some(n) = &self.qname {
            parts.push(format!("qname={}", list(n)));
        }
        if let Some(s) = &self.qname_suffix {
            parts.push(format!("suffix={}", list(s)));
        }
        if let Some(f) = &self.qname_file {
            parts.push(format!("file={}", f.display()));
        }
        if let Some(t) = &self.qtype {
            parts.push(format!("qtype={}", list(t).to_ascii_uppercase()));
        }
        if let Some(c) = &self.qclass {
            parts.push(format!("qclass={}", c.to_ascii_uppercase()));
        }
        if let Some(o) = &self.opcode {
            parts.push(format!("opcode={}", o.to_ascii_lowercase()));
        }
        if let Some(v) = self.rd {
            parts.push(format!("rd={v}"));
        }
        if let Some(v) = self.dnssec_ok {
            parts.push(format!("do={v}"));
        }
        match self.edns {
            Some(EdnsSelector::Present(v)) => parts.push(format!("edns={v}")),
            Some(EdnsSelector::Version(v)) => parts.push(format!("edns_version={v}")),
            None => {}
        }
        if let Some([lo, hi]) = self.query_size {
            parts.push(format!("size={lo}-{hi}"));
        }
        if let Some(t) = self.transport {
            parts.push(format!("transport={t:?}").to_ascii_lowercase());
        }
        parts
    }

    /// Whether no selector is given: it matches every query.
    pub fn is_empty(&self) -> bool {
        let Selector {
            source,
            listen,
            qname,
            qname_suffix,
            qname_file,
            qtype,
            qclass,
            opcode,
            rd,
            dnssec_ok,
            edns,
            query_size,
            transport,
            file_names: _,
        } = self;
        source.is_none()
            && listen.is_none()
            && qname.is_none()
            && qname_suffix.is_none()
            && qname_file.is_none()
            && qtype.is_none()
            && qclass.is_none()
            && opcode.is_none()
            && rd.is_none()
            && dnssec_ok.is_none()
            && edns.is_none()
            && query_size.is_none()
            && transport.is_none()
    }
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

/// Classes by name (RFC 1035 §3.2.4, RFC 6895 §3.2).
pub fn qclass_from_name(name: &str) -> Option<u16> {
    let upper = name.to_ascii_uppercase();
    if let Some(num) = upper.strip_prefix("CLASS") {
        return num.parse().ok();
    }
    match upper.as_str() {
        "IN" => Some(1),
        "CH" => Some(3),
        "HS" => Some(4),
        "NONE" => Some(254),
        "ANY" => Some(255),
        _ => None,
    }
}

/// For each rule of `new` (and its default, last), the index in `old` of
/// the same rule, if it was there: each old rule is taken once, the first
/// unused one equal to it, so duplicates map in order.
pub fn rule_map<T: PartialEq>(old: &[T], new: &[T]) -> Vec<Option<usize>> {
    let mut used = vec![false; old.len()];
    let mut map: Vec<Option<usize>> = new
        .iter()
        .map(|r| {
            let i = old
                .iter()
                .enumerate()
                .position(|(i, o)| !used[i] && o == r)?;
            used[i] = true;
            Some(i)
        })
        .collect();
    map.push(Some(old.len()));
    map
}
