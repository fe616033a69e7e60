//! Checking rules (each alone, then their order) and compiling them.

use std::collections::BTreeSet;

use super::records::{MAX_SPOOF_RECORDS, TYPE_CNAME, parse_record, parse_soa};
use super::{
    Action, AnswerSpec, EdnsMatch, EdnsSelector, MAX_RULES, NameEntry, RuleConfig, RuleSpec,
    Selector, SelectorSpec, TransportMatch, TransportSelector, opcode_from_name, qclass_from_name,
};
use crate::config::ConfigError;
use crate::dns::{self, name_to_wire};
use crate::net::Prefix;

/// Default TTL of spoofed records.
pub const DEFAULT_SPOOF_TTL: u32 = 60;

/// Reads and parses the `qname_file`s of rule `index` with `read`.
pub fn load_files(
    index: usize,
    rule: &mut RuleConfig,
    read: &dyn Fn(&std::path::Path) -> Result<String, String>,
) -> Result<(), ConfigError> {
    for (prefix, sel) in [("", Some(&mut rule.when)), ("not.", rule.not.as_mut())] {
        let Some(sel) = sel else { continue };
        let Some(path) = &sel.qname_file else {
            continue;
        };
        let key = format!("rule[{index}].{prefix}qname_file");
        if !path.is_absolute() {
            return Err(ConfigError::invalid(key, "write an absolute path"));
        }
        let text = read(path).map_err(|e| ConfigError::invalid(&key, e))?;
        let names = super::parse_name_file(&text)
            .map_err(|e| ConfigError::invalid(&key, format!("{}: {e}", path.display())))?;
        if names.is_empty() {
            return Err(ConfigError::invalid(
                key,
                format!("{}: no names: the rule would match nothing", path.display()),
            ));
        }
        sel.file_names = Some(std::sync::Arc::new(names));
    }
    Ok(())
}

/// Checks rule `index` alone; [`check_order`] checks the list.
pub fn check(index: usize, rule: &RuleConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("rule[{index}].{field}");
    if let Some(k) = rule.unknown.keys().next() {
        return Err(ConfigError::invalid(
            key(k),
            "unknown key: see packaging/xdpdns.toml for the selectors and actions",
        ));
    }
    compile_selector(&rule.when, &key)?;
    if let Some(not) = &rule.not {
        if not.is_empty() {
            return Err(ConfigError::invalid(
                key("not"),
                "an empty not matches every query",
            ));
        }
        compile_selector(not, &|f: &str| key(&format!("not.{f}")))?;
    }
    let answers_here = rule.action.rcode().is_some();
    let misplaced = |field: &str, goes: &str| {
        Err(ConfigError::invalid(
            key(field),
            format!("{field} goes with {goes}"),
        ))
    };
    match (&rule.answers, rule.action) {
        (None, Action::Spoof) => {
            return Err(ConfigError::invalid(
                key("answers"),
                "action = \"spoof\" needs answers, e.g. [\"A 192.0.2.1\"]",
            ));
        }
        (Some(_), a) if a != Action::Spoof => return misplaced("answers", "action = \"spoof\""),
        _ => {}
    }
    if rule.ttl.is_some() && rule.action != Action::Spoof {
        return misplaced("ttl", "action = \"spoof\"");
    }
    spoof_records(rule).map_err(|e| ConfigError::invalid(key("answers"), e))?;
    if rule.soa.is_some() && !matches!(rule.action, Action::NxDomain | Action::NoError) {
        return misplaced("soa", "action = \"nxdomain\" or \"nodata\"");
    }
    if rule.zone.is_some() && rule.soa.is_none() {
        return misplaced("zone", "soa");
    }
    soa(rule).map_err(|e| ConfigError::invalid(key("soa"), e))?;
    if (rule.aa || rule.ra) && !answers_here {
        return misplaced(if rule.aa { "aa" } else { "ra" }, "an action answered here");
    }
    if rule.action == Action::Tc && rule.when.transport == Some(TransportSelector::Tcp) {
        return Err(ConfigError::invalid(
            key("transport"),
            "action = \"tc\" matches UDP queries only: with transport = \"tcp\" it never matches",
        ));
    }
    let spec = compile_rule(rule);
    if let Some(not) = &spec.not
        && covers(not, &spec.when)
    {
        return Err(ConfigError::invalid(
            key("not"),
            "the not table holds for every query the selectors match: the rule never matches",
        ));
    }
    Ok(())
}

/// Checks the list: its length, and that no rule is unreachable because an
/// earlier one matches every query it could match.
pub fn check_order(rules: &[RuleConfig]) -> Result<(), ConfigError> {
    if rules.len() > MAX_RULES {
        return Err(ConfigError::invalid(
            "rule",
            format!("{} rules: at most {MAX_RULES}", rules.len()),
        ));
    }
    let specs: Vec<RuleSpec> = rules.iter().map(compile_rule).collect();
    for (i, later) in specs.iter().enumerate() {
        for (j, earlier) in specs[..i].iter().enumerate() {
            if earlier.not.is_none() && covers(&earlier.when, &later.when) {
                let why = if earlier.when == SelectorSpec::default() {
                    "matches every query".to_string()
                } else {
                    "matches every query this one matches".to_string()
                };
                return Err(ConfigError::invalid(
                    format!("rule[{i}]"),
                    format!("unreachable: rule[{j}] before it {why}"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether every query `narrow` matches, `wide` matches too (judged
/// selector by selector: a selector `wide` gives must be given by `narrow`
/// the same or narrower).
fn covers(wide: &SelectorSpec, narrow: &SelectorSpec) -> bool {
    fn subset<T: Ord + Clone>(wide: &[T], narrow: &[T]) -> bool {
        if wide.is_empty() {
            return true;
        }
        if narrow.is_empty() {
            return false;
        }
        let w: BTreeSet<T> = wide.iter().cloned().collect();
        narrow.iter().all(|n| w.contains(n))
    }
    fn same<T: PartialEq>(wide: &Option<T>, narrow: &Option<T>) -> bool {
        wide.is_none() || wide == narrow
    }
    let names_covered = wide.names.is_empty()
        || (!narrow.names.is_empty()
            && narrow.names.iter().all(|n| {
                wide.names.iter().any(|w| {
                    w.wire == n.wire && (!w.exact || n.exact)
                        || !w.exact && dns_below(&n.wire, &w.wire)
                })
            }));
    let size_covered = match (wide.query_size, narrow.query_size) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some((wl, wh)), Some((nl, nh))) => wl <= nl && nh <= wh,
    };
    subset(&wide.source, &narrow.source)
        && subset(&wide.listen, &narrow.listen)
        && names_covered
        && subset(&wide.qtypes, &narrow.qtypes)
        && same(&wide.qclass, &narrow.qclass)
        && same(&wide.opcode, &narrow.opcode)
        && same(&wide.rd, &narrow.rd)
        && same(&wide.dnssec_ok, &narrow.dnssec_ok)
        && same(&wide.edns, &narrow.edns)
        && size_covered
        && same(&wide.transport, &narrow.transport)
}

/// Whether wire name `name` lies strictly below wire name `suffix` (both
/// lower case, validated).
fn dns_below(name: &[u8], suffix: &[u8]) -> bool {
    let Some(start) = name.len().checked_sub(suffix.len()) else {
        return false;
    };
    let mut at = 0;
    while at < start {
        at += 1 + usize::from(name[at]);
    }
    start > 0 && at == start && &name[start..] == suffix
}

fn compile_selector(
    s: &Selector,
    key: &dyn Fn(&str) -> String,
) -> Result<SelectorSpec, ConfigError> {
    let mut out = SelectorSpec::default();
    for (i, p) in s.source.iter().flatten().enumerate() {
        let p: Prefix = p
            .parse()
            .map_err(|e| ConfigError::invalid(key(&format!("source[{i}]")), e))?;
        out.source.push(p);
    }
    if s.source.as_ref().is_some_and(Vec::is_empty) {
        return Err(ConfigError::invalid(
            key("source"),
            "an empty list matches nothing",
        ));
    }
    out.listen = s.listen.clone().unwrap_or_default();
    for (field, list, exact) in [
        ("qname", &s.qname, true),
        ("qname_suffix", &s.qname_suffix, false),
    ] {
        let Some(list) = list else { continue };
        if list.as_slice().is_empty() {
            return Err(ConfigError::invalid(
                key(field),
                "an empty list matches nothing",
            ));
        }
        for n in list.as_slice() {
            let wire = name_to_wire(n).map_err(|e| ConfigError::invalid(key(field), e))?;
            out.names.push(NameEntry { wire, exact });
        }
    }
    if s.qname_file.is_some() {
        match &s.file_names {
            Some(names) => out.names.extend(names.iter().cloned()),
            None => return Err(ConfigError::invalid(key("qname_file"), "not read")),
        }
    }
    for t in s.qtype.iter().flat_map(|t| t.as_slice()) {
        let v = dns::qtype_from_name(t).ok_or_else(|| {
            ConfigError::invalid(
                key("qtype"),
                format!(
                    "{t:?} is not a record type: write a mnemonic such as \"AAAA\" or \"TYPE65\""
                ),
            )
        })?;
        out.qtypes.push(v);
    }
    if let Some(c) = &s.qclass {
        out.qclass = Some(qclass_from_name(c).ok_or_else(|| {
            ConfigError::invalid(
                key("qclass"),
                format!("{c:?} is not a class: write IN, CH, HS, ANY or CLASS<n>"),
            )
        })?);
    }
    if let Some(op) = &s.opcode {
        out.opcode = Some(opcode_from_name(op).ok_or_else(|| {
            ConfigError::invalid(
                key("opcode"),
                format!(
                    "{op:?} is not an opcode: write query, iquery, status, notify, update, dso or a number 0-15"
                ),
            )
        })?);
    }
    out.rd = s.rd;
    out.dnssec_ok = s.dnssec_ok;
    out.edns = s.edns.map(|e| match e {
        EdnsSelector::Present(true) => EdnsMatch::Present,
        EdnsSelector::Present(false) => EdnsMatch::Absent,
        EdnsSelector::Version(v) => EdnsMatch::Version(v),
    });
    if let Some([lo, hi]) = s.query_size {
        if lo > hi {
            return Err(ConfigError::invalid(
                key("query_size"),
                format!("[{lo}, {hi}]: the minimum is above the maximum"),
            ));
        }
        out.query_size = Some((lo, hi));
    }
    out.transport = s.transport.map(|t| match t {
        TransportSelector::Udp => TransportMatch::Udp,
        TransportSelector::Tcp => TransportMatch::Tcp,
    });
    Ok(out)
}

fn spoof_records(rule: &RuleConfig) -> Result<Vec<super::SpoofRecord>, String> {
    let Some(answers) = &rule.answers else {
        return Ok(Vec::new());
    };
    if answers.is_empty() || answers.len() > MAX_SPOOF_RECORDS {
        return Err(format!("1 to {MAX_SPOOF_RECORDS} records"));
    }
    let ttl = rule.ttl.unwrap_or(DEFAULT_SPOOF_TTL);
    let records = answers
        .iter()
        .map(|a| parse_record(a, ttl))
        .collect::<Result<Vec<_>, _>>()?;
    if records.iter().any(|r| r.rtype == TYPE_CNAME) && records.len() > 1 {
        return Err("a CNAME is the only record of its name (RFC 1034 §3.6.2)".into());
    }
    Ok(records)
}

fn soa(rule: &RuleConfig) -> Result<Option<super::SoaSpec>, String> {
    let Some(text) = &rule.soa else {
        return Ok(None);
    };
    let zone = match (&rule.zone, &rule.when.qname_suffix) {
        (Some(z), _) => z.clone(),
        (None, Some(s)) if s.as_slice().len() == 1 => s.as_slice()[0].clone(),
        _ => {
            return Err(
                "say whose SOA it is with zone = \"...\" (the default is the rule's one qname_suffix)"
                    .into(),
            );
        }
    };
    parse_soa(text, &zone).map(Some)
}

/// Compiles one checked rule.
fn compile_rule(rule: &RuleConfig) -> RuleSpec {
    let nothing = |_: &str| String::new();
    let mut when = compile_selector(&rule.when, &nothing).unwrap_or_default();
    if rule.action == Action::Tc && when.transport.is_none() {
        when.transport = Some(TransportMatch::Udp);
    }
    RuleSpec {
        when,
        not: rule
            .not
            .as_ref()
            .map(|n| compile_selector(n, &nothing).unwrap_or_default()),
        action: rule.action,
        pool: rule.pool.clone(),
        answers: spoof_records(rule).unwrap_or_default(),
        soa: soa(rule).ok().flatten(),
        aa: rule.aa,
        ra: rule.ra,
    }
}

/// Compiles validated rules. Call only on a validated configuration.
pub fn compile(
    rules: &[RuleConfig],
    edns_udp_size: u16,
    forward: bool,
    acl: &crate::config::Acl,
) -> AnswerSpec {
    AnswerSpec {
        rules: rules.iter().map(compile_rule).collect(),
        default: if forward {
            Action::Forward
        } else {
            Action::Refused
        },
        edns_udp_size,
        acl: acl.clone(),
        tally: None,
        min_ttl: 0,
        max_ttl: 0,
    }
}
