//! `[limits]` and `[[block]]`: abuse protection, enforced in the XDP program
//! before anything is redirected. A rate limit per client prefix (IPv4 /32,
//! IPv6 /56 by default) shared by every queue; prefixes exempt from it;
//! prefixes blocked outright; a dry run that only counts.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::net::Prefix;

/// What happens to a query over its prefix's rate.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LimitAction {
    /// Dropped in the XDP program.
    #[default]
    Drop,
    /// REFUSED, built in the XDP program (XDP_TX).
    Refused,
    /// TC=1, built in the XDP program: real clients retry over TCP.
    Tc,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    /// Queries a second each client prefix may send, on average.
    pub qps_per_client: u32,
    /// How many queries beyond the average a prefix may send at once
    /// (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default = "default_v4_prefix")]
    pub v4_prefix: u8,
    #[serde(default = "default_v6_prefix")]
    pub v6_prefix: u8,
    #[serde(default)]
    pub action: LimitAction,
    /// With `action = "drop"`: every Nth limited query answered TC=1
    /// instead (RRL's slip; 0: none).
    #[serde(default)]
    pub slip: u32,
    /// Client prefixes never limited.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Count what would be limited or blocked, drop nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_v4_prefix() -> u8 {
    32
}

fn default_v6_prefix() -> u8 {
    56
}

/// What happens to a query from a blocked prefix.
/// What a blocked prefix's queries get: dropped, or answered REFUSED or
/// TC=1 (the client retries over TCP) by the XDP program (XDP_TX; where
/// that cannot reach the peer, dropped).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BlockAction {
    #[default]
    Drop,
    Refused,
    Tc,
}

impl BlockAction {
    pub fn name(self) -> &'static str {
        match self {
            BlockAction::Drop => "drop",
            BlockAction::Refused => "refused",
            BlockAction::Tc => "tc",
        }
    }
}

impl std::str::FromStr for BlockAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(BlockAction::Drop),
            "refused" => Ok(BlockAction::Refused),
            "tc" => Ok(BlockAction::Tc),
            _ => Err(format!("{s:?}: drop, refused or tc")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlockConfig {
    pub prefix: String,
    #[serde(default)]
    pub action: BlockAction,
    /// Drop the prefix's TCP to listen addresses too (default: UDP only,
    /// so clients answered TC=1 elsewhere can still retry over TCP).
    #[serde(default)]
    pub tcp: bool,
}

/// `[[dynamic_block]]`: a client prefix whose answers of a kind exceed
/// `rate` a second over `window_s` is blocked for `block_s`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DynamicBlockConfig {
    /// Count answers with this rcode ("NXDOMAIN", "SERVFAIL", "REFUSED")...
    #[serde(default)]
    pub rcode: Option<String>,
    /// ...or every answer: a prefix past this many a second...
    #[serde(default)]
    pub qps: Option<u32>,
    /// ...or answer bytes: past this many a second (amplification).
    #[serde(default)]
    pub bytes: Option<u32>,
    /// With `rcode`: how many such answers a second trip the rule.
    #[serde(default)]
    pub rate: Option<u32>,
    /// Count only answers to names at or below this suffix (a
    /// random-subdomain flood aimed at one zone): at most
    /// [`MAX_SUFFIX_RULES`] rules have one.
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default = "default_window_s")]
    pub window_s: u32,
    #[serde(default = "default_block_s")]
    pub block_s: u32,
    #[serde(default)]
    pub action: BlockAction,
}

fn default_window_s() -> u32 {
    5
}

fn default_block_s() -> u32 {
    60
}

/// What a dynamic rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Counted {
    /// Every answer.
    Answers,
    /// Answers with this rcode.
    Rcode(u8),
    /// Bytes of answers.
    Bytes,
}

/// A dynamic block rule in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicRule {
    pub counted: Counted,
    /// Counts only answers under a suffix: the index of that suffix in
    /// [`TallySpec::suffixes`] (and of its count in a client's report).
    #[serde(default)]
    pub under: Option<u8>,
    /// Per second, over the window.
    pub rate: u32,
    pub window_s: u32,
    pub block_s: u32,
    /// What the prefixes it blocks get.
    #[serde(default)]
    pub action: BlockAction,
}

/// How dataplanes tally answers per client for the dynamic rules: the
/// prefix lengths a client is counted by, and the suffixes whose answers
/// are counted apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallySpec {
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    #[serde(default)]
    pub suffixes: Vec<SuffixTally>,
}

/// Dynamic rules that count under a suffix, at most.
pub const MAX_SUFFIX_RULES: usize = 4;

/// Answers counted apart per client: those to names at or below `wire`
/// (lower case, wire format), of the kind `counted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuffixTally {
    pub wire: Vec<u8>,
    pub counted: Counted,
}

/// A rate limit in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub qps: u32,
    pub burst: u32,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub action: LimitAction,
    pub slip: u32,
}

/// Abuse protection in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abuse {
    pub limit: Option<RateLimit>,
    pub exempt: Vec<Prefix>,
    pub blocks: Vec<Prefix>,
    /// Those of `blocks` that cover TCP too.
    pub tcp_blocks: Vec<Prefix>,
    /// Those of `blocks` answered rather than dropped, with their action.
    pub answered_blocks: Vec<(Prefix, BlockAction)>,
    pub dry_run: bool,
    pub dynamic: Vec<DynamicRule>,
    /// What the rules of `dynamic` with a suffix count, by their `under`.
    pub suffixes: Vec<SuffixTally>,
}

impl Abuse {
    /// What dataplanes tally, if any dynamic rule needs it: by the limits'
    /// prefix lengths (default /32 and /56).
    pub fn tally(&self) -> Option<TallySpec> {
        (!self.dynamic.is_empty()).then(|| TallySpec {
            v4_prefix: self.limit.map_or(32, |l| l.v4_prefix),
            v6_prefix: self.limit.map_or(56, |l| l.v6_prefix),
            suffixes: self.suffixes.clone(),
        })
    }
}

/// Prefixes per policy trie (exempt and blocked together).
pub const MAX_POLICY_PREFIXES: usize = 4096;

fn prefixes(list: &[String], key: impl Fn(usize) -> String) -> Result<Vec<Prefix>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<Prefix>()
                .map_err(|e| ConfigError::invalid(key(i), e))
        })
        .collect()
}

/// Dynamic rules at most.
pub const MAX_DYNAMIC_RULES: usize = 16;

fn dynamic_rule(i: usize, d: &DynamicBlockConfig) -> Result<DynamicRule, ConfigError> {
    let key = |f: &str| format!("dynamic_block[{i}].{f}");
    let (counted, rate) = match (&d.rcode, d.qps.or(d.bytes), d.rate) {
        _ if d.qps.is_some() && d.bytes.is_some() => {
            return Err(ConfigError::invalid(
                key("bytes"),
                "one of rcode, qps and bytes",
            ));
        }
        (Some(r), None, Some(rate)) => {
            let code = match r.to_ascii_uppercase().as_str() {
                "NXDOMAIN" => 3,
                "SERVFAIL" => 2,
                "REFUSED" => 5,
                _ => {
                    return Err(ConfigError::invalid(
                        key("rcode"),
                        format!("{r:?}: NXDOMAIN, SERVFAIL or REFUSED"),
                    ));
                }
            };
            (Counted::Rcode(code), rate)
        }
        (Some(_), None, None) => {
            return Err(ConfigError::invalid(
                key("rate"),
                "how many a second (with rcode)",
            ));
        }
        (None, Some(n), None) if d.bytes.is_some() => (Counted::Bytes, n),
        (None, Some(qps), None) => (Counted::Answers, qps),
        (None, None, _) => {
            return Err(ConfigError::invalid(
                key("rcode"),
                "an rcode with a rate, qps or bytes",
            ));
        }
        _ => {
            return Err(ConfigError::invalid(
                key("qps"),
                "either rcode with rate, or qps or bytes alone",
            ));
        }
    };
    if rate == 0 {
        return Err(ConfigError::invalid(key("rate"), "at least 1"));
    }
    if !(1..=60).contains(&d.window_s) {
        return Err(ConfigError::invalid(key("window_s"), "1 to 60"));
    }
    if !(1..=86_400).contains(&d.block_s) {
        return Err(ConfigError::invalid(key("block_s"), "1 to 86400"));
    }
    Ok(DynamicRule {
        counted,
        under: None,
        rate,
        window_s: d.window_s,
        block_s: d.block_s,
        action: d.action,
    })
}

pub(super) fn compile(
    limits: Option<&LimitsSection>,
    blocks: &[BlockConfig],
    dynamic: &[DynamicBlockConfig],
) -> Result<Abuse, ConfigError> {
    let mut abuse = Abuse::default();
    if dynamic.len() > MAX_DYNAMIC_RULES {
        return Err(ConfigError::invalid(
            "dynamic_block",
            format!("at most {MAX_DYNAMIC_RULES} rules"),
        ));
    }
    for (i, d) in dynamic.iter().enumerate() {
        let mut rule = dynamic_rule(i, d)?;
        if let Some(s) = &d.suffix {
            let key = format!("dynamic_block[{i}].suffix");
            let wire = crate::dns::name_to_wire(s).map_err(|e| ConfigError::invalid(&key, e))?;
            if wire == [0] {
                return Err(ConfigError::invalid(
                    &key,
                    "the root is every name: leave suffix out",
                ));
            }
            if abuse.suffixes.len() == MAX_SUFFIX_RULES {
                return Err(ConfigError::invalid(
                    key,
                    format!("at most {MAX_SUFFIX_RULES} rules with a suffix"),
                ));
            }
            rule.under = Some(abuse.suffixes.len() as u8);
            abuse.suffixes.push(SuffixTally {
                wire,
                counted: rule.counted,
            });
        }
        abuse.dynamic.push(rule);
    }
    if let Some(l) = limits {
        if l.qps_per_client == 0 {
            return Err(ConfigError::invalid(
                "limits.qps_per_client",
                "must be at least 1 (leave out [limits] for none)",
            ));
        }
        if l.v4_prefix == 0 || l.v4_prefix > 32 {
            return Err(ConfigError::invalid("limits.v4_prefix", "1 to 32"));
        }
        if l.v6_prefix == 0 || l.v6_prefix > 128 {
            return Err(ConfigError::invalid("limits.v6_prefix", "1 to 128"));
        }
        if l.slip != 0 && l.action != LimitAction::Drop {
            return Err(ConfigError::invalid(
                "limits.slip",
                "slip applies to action = \"drop\" (refused and tc answer every limited query)",
            ));
        }
        if l.slip > 1000 {
            return Err(ConfigError::invalid("limits.slip", "0 to 1000"));
        }
        abuse.limit = Some(RateLimit {
            qps: l.qps_per_client,
            burst: l.burst.unwrap_or(l.qps_per_client),
            v4_prefix: l.v4_prefix,
            v6_prefix: l.v6_prefix,
            action: l.action,
            slip: l.slip,
        });
        abuse.exempt = prefixes(&l.exempt, |i| format!("limits.exempt[{i}]"))?;
        abuse.dry_run = l.dry_run;
    }
    let listed: Vec<String> = blocks.iter().map(|b| b.prefix.clone()).collect();
    abuse.blocks = prefixes(&listed, |i| format!("block[{i}].prefix"))?;
    abuse.tcp_blocks = abuse
        .blocks
        .iter()
        .zip(blocks)
        .filter(|(_, b)| b.tcp)
        .map(|(p, _)| *p)
        .collect();
    abuse.answered_blocks = abuse
        .blocks
        .iter()
        .zip(blocks)
        .filter(|(_, b)| b.action != BlockAction::Drop)
        .map(|(p, b)| (*p, b.action))
        .collect();
    if abuse.exempt.len() + abuse.blocks.len() > MAX_POLICY_PREFIXES {
        return Err(ConfigError::invalid(
            "block",
            format!("at most {MAX_POLICY_PREFIXES} exempt and blocked prefixes together"),
        ));
    }
    if let Some((i, p)) = abuse
        .blocks
        .iter()
        .enumerate()
        .find(|(_, p)| abuse.exempt.contains(p))
    {
        return Err(ConfigError::invalid(
            format!("block[{i}].prefix"),
            format!("{p} is also in limits.exempt: one prefix, one policy"),
        ));
    }
    Ok(abuse)
}

impl Abuse {
    /// One line for logs, `check` and reload messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.limit {
            Some(l) => parts.push(format!(
                "{} q/s (burst {}) per client /{} (IPv4), /{} (IPv6), over it {}",
                l.qps,
                l.burst,
                l.v4_prefix,
                l.v6_prefix,
                match (l.action, l.slip) {
                    (LimitAction::Drop, 0) => "dropped".to_string(),
                    (LimitAction::Drop, n) => format!("dropped, every {n} answered TC=1"),
                    (LimitAction::Refused, _) => "answered REFUSED".to_string(),
                    (LimitAction::Tc, _) => "answered TC=1".to_string(),
                }
            )),
            None => parts.push("no rate limit".to_string()),
        }
        if !self.exempt.is_empty() {
            parts.push(format!("{} exempt", self.exempt.len()));
        }
        parts.push(format!("{} blocked", self.blocks.len()));
        if !self.dynamic.is_empty() {
            parts.push(format!("{} dynamic block rules", self.dynamic.len()));
        }
        if self.dry_run {
            parts.push("dry run: only counted".to_string());
        }
        parts.join("; ")
    }
}
