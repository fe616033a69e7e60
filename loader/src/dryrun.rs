//! `xdpdns check --query`: what the rules would do with a query, said
//! without sending anything. The query is built here from the operator's
//! arguments and judged by the dataplanes' own rule evaluator and answer
//! writer; nothing comes from the network.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use xdpdns_common::config::{Action, Config};
use xdpdns_common::dns::{name_to_wire, qtype_from_name};
use xdpdns_common::net::PrefixSet;
use xdpdns_dataplane::dns::{self, Extra, parse_query};
use xdpdns_dataplane::pipeline::rules::{Facts, Rules};

/// The query to judge.
#[derive(Debug, Clone)]
pub struct DryQuery {
    pub name: String,
    pub qtype: String,
    pub from: IpAddr,
    /// The listen address it arrives at (default: the first).
    pub to: Option<SocketAddr>,
    pub tcp: bool,
    pub dnssec_ok: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("{0:?} is not a domain name: {1}")]
    Name(String, String),
    #[error("{0:?} is not a record type: write a mnemonic such as AAAA or TYPE65")]
    Type(String),
}

/// The query's message: RD set, class IN, an OPT record (1232 bytes, DO
/// as asked), as `dig` sends by default.
fn message(wire: &[u8], qtype: u16, dnssec_ok: bool) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    m.extend_from_slice(wire);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0]);
    m.extend_from_slice(&[if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    m
}

const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];

/// The verdict on `q` under `config`, as lines of text.
pub fn explain(config: &Config, q: &DryQuery) -> Result<String, DryRunError> {
    let wire = name_to_wire(&q.name).map_err(|e| DryRunError::Name(q.name.clone(), e))?;
    let qtype = qtype_from_name(&q.qtype).ok_or_else(|| DryRunError::Type(q.qtype.clone()))?;
    let live = &config.live;
    let to =
        q.to.or_else(|| live.listen.first().copied())
            .unwrap_or_else(|| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 53));
    let transport = if q.tcp { "tcp" } else { "udp" };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "query: {} {} from {} to {to} over {transport}{}",
        q.name,
        q.qtype.to_ascii_uppercase(),
        q.from,
        if q.dnssec_ok { " with DO" } else { "" }
    );
    if !PrefixSet::new(&live.acl.allow).contains(q.from) {
        let _ = writeln!(
            out,
            "acl: {} is outside [acl] allow: {}",
            q.from,
            match live.acl.action.name() {
                "drop" => "dropped, no answer",
                _ => "answered REFUSED",
            }
        );
        return Ok(out);
    }
    let spec = live.answer_spec();
    let rules = Rules::new(&spec, &[]);
    let mut msg = message(&wire, qtype, q.dnssec_ok);
    let len = msg.len();
    let parsed = parse_query(&msg).expect("a query we built");
    let facts = Facts {
        ip: q.from,
        local: to,
        tcp: q.tcp,
        size: len,
    };
    let (index, action) = rules.decide(&msg, &parsed, &facts);
    match live.rule.get(index) {
        Some(r) => {
            let _ = writeln!(out, "rule: rule[{index}] ({})", r.label());
        }
        None => {
            let _ = writeln!(out, "rule: none matches: the default ({})", action.name());
        }
    }
    match action {
        Action::Drop => out.push_str("answer: none (dropped)\n"),
        Action::Forward => {
            let pool = spec
                .rules
                .get(index)
                .and_then(|r| r.pool.clone())
                .unwrap_or_else(|| xdpdns_common::config::DEFAULT_POOL.to_string());
            let members: Vec<String> = live
                .backend
                .iter()
                .filter(|b| b.pool == pool)
                .map(|b| b.address.to_string())
                .collect();
            if members.is_empty() {
                out.push_str("answer: REFUSED (forward, but no backend is configured)\n");
            } else {
                let policy = live
                    .pool
                    .iter()
                    .find(|p| p.name == pool)
                    .and_then(|p| serde_json::to_value(p.policy).ok())
                    .and_then(|v| v.as_str().map(|s| format!("policy {s}")))
                    .unwrap_or_else(|| "the default policy".to_string());
                let _ = writeln!(
                    out,
                    "forward: to pool {pool:?} ({policy}): {}",
                    members.join(", ")
                );
            }
        }
        other => {
            let rcode = other.rcode().map_or(0, |r| r.value());
            let local = rules.local(index);
            let extra = Extra {
                answers: &local.answers,
                soa: local.soa.as_ref(),
                aa: local.aa,
                ra: local.ra,
                tc: other == Action::Tc,
                max_len: if q.tcp { 65535 } else { 1232 },
            };
            msg.resize(4096, 0);
            let rc = other.rcode().unwrap_or(xdpdns_common::dns::Rcode::Refused);
            let n = dns::write_answer_with(&mut msg, &parsed, rc, 1232, &extra).unwrap_or(0);
            let counts = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
            let mut flags = Vec::new();
            for (bit, at, name) in [(0x04, 2, "aa"), (0x02, 2, "tc"), (0x80, 3, "ra")] {
                if msg[at] & bit != 0 {
                    flags.push(name);
                }
            }
            let _ = writeln!(
                out,
                "answer: {}{}, {} answer record(s), {} authority, {n} bytes",
                RCODES[usize::from(rcode)],
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", flags.join(" "))
                },
                counts(6),
                counts(8),
            );
            if counts(6) > 0 {
                for r in dns::records_for(&local.answers, qtype) {
                    let _ = writeln!(out, "  {} {} IN {}", q.name, r.ttl, record_text(r));
                }
            }
            if counts(8) > 0
                && let Some(s) = &local.soa
            {
                let _ = writeln!(out, "  authority: SOA, TTL {} (negative-cache time)", s.ttl);
            }
        }
    }
    Ok(out)
}

fn record_text(r: &xdpdns_common::config::SpoofRecord) -> String {
    match (r.rtype, r.rdata.len()) {
        (1, 4) => format!(
            "A {}",
            IpAddr::from(<[u8; 4]>::try_from(&r.rdata[..]).unwrap_or_default())
        ),
        (28, 16) => format!(
            "AAAA {}",
            IpAddr::from(<[u8; 16]>::try_from(&r.rdata[..]).unwrap_or_default())
        ),
        (5, _) => format!("CNAME {}", wire_text(&r.rdata)),
        (16, _) => format!("TXT ({} bytes)", r.rdata.len()),
        (t, _) => format!("TYPE{t}"),
    }
}

fn wire_text(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut at = 0;
    while let Some(&len) = wire.get(at) {
        if len == 0 {
            break;
        }
        let label = wire
            .get(at + 1..at + 1 + usize::from(len))
            .unwrap_or_default();
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
        at += 1 + usize::from(len);
    }
    if out.is_empty() { ".".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdpdns_common::config::contract;

    const CONFIG: &str = r#"
[xdp]
interface = "eth0"
[[listen]]
address = "192.0.2.1:53"
[acl]
allow = ["0.0.0.0/0", "::/0"]
"#;

    /// The contract's rules, then one that drops.
    fn config() -> Config {
        let text = format!(
            "{CONFIG}{}{}[[rule]]\nqname_suffix = \"drop.test.\"\naction = \"drop\"\n",
            contract::POOLS,
            contract::RULES
        );
        Config::from_toml(&text).unwrap()
    }

    fn run(name: &str, qtype: &str, from: &str, tcp: bool) -> String {
        let c = config();
        explain(
            &c,
            &DryQuery {
                name: name.into(),
                qtype: qtype.into(),
                from: from.parse().unwrap(),
                to: None,
                tcp,
                dnssec_ok: false,
            },
        )
        .unwrap()
    }

    #[test]
    fn a_table_of_queries() {
        let c = "192.0.2.100";
        for (name, qtype, from, tcp, want) in [
            (
                "www.a.test.",
                "A",
                c,
                false,
                &["rule: rule[0]", "forward: to pool \"a\"", "192.0.2.53:53"][..],
            ),
            (
                "x.example.",
                "AAAA",
                "198.51.100.7",
                false,
                &["rule: rule[1]", "answer: REFUSED"],
            ),
            (
                "x.example.",
                "A",
                "198.51.100.7",
                false,
                &["the default (forward)", "pool \"default\"", "192.0.2.54:53"],
            ),
            (
                "spoof.test.",
                "A",
                c,
                false,
                &[
                    "rule: rule[2]",
                    "NOERROR [aa], 1 answer",
                    "spoof.test. 60 IN A 192.0.2.99",
                ],
            ),
            ("spoof.test.", "AAAA", c, false, &["AAAA 2001:db8::99"]),
            ("spoof.test.", "MX", c, false, &["NOERROR [aa], 0 answer"]),
            (
                "x.tc.test.",
                "A",
                c,
                false,
                &["rule: rule[3]", "NOERROR [tc]"],
            ),
            ("x.tc.test.", "A", c, true, &["the default (forward)"]),
            (
                "x.gone.test.",
                "A",
                c,
                false,
                &[
                    "rule: rule[4]",
                    "NXDOMAIN, 0 answer record(s), 1 authority",
                    "TTL 300",
                ],
            ),
            (
                "x.drop.test.",
                "A",
                c,
                false,
                &["rule: rule[5]", "none (dropped)"],
            ),
        ] {
            let text = run(name, qtype, from, tcp);
            for w in want {
                assert!(
                    text.contains(w),
                    "{name} {qtype} from {from}: want {w:?} in\n{text}"
                );
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let c = config();
        let q = |name: &str, qtype: &str| DryQuery {
            name: name.into(),
            qtype: qtype.into(),
            from: "192.0.2.9".parse().unwrap(),
            to: None,
            tcp: false,
            dnssec_ok: false,
        };
        assert!(explain(&c, &q("a..b", "A")).is_err());
        assert!(explain(&c, &q("a.", "BOGUS")).is_err());
    }
}
