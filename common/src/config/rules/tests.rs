//! Rules as the configuration contract writes them.

use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::config::{Config, ConfigError};

const BASE: &str = r#"
[xdp]
interface = "eth0"
[[listen]]
address = "192.0.2.1:53"
"#;

fn parse(rules: &str) -> Result<Config, ConfigError> {
    parse_with(rules, &HashMap::new())
}

fn parse_with(rules: &str, files: &HashMap<&str, String>) -> Result<Config, ConfigError> {
    let read = |p: &Path| {
        files
            .get(p.to_str().unwrap())
            .cloned()
            .ok_or_else(|| format!("{}: no such file", p.display()))
    };
    Config::from_toml_with(&format!("{BASE}{}\n{rules}", contract::POOLS), &read)
}

fn invalid(rules: &str) -> (String, String) {
    match parse(rules) {
        Err(ConfigError::Invalid { key, problem }) => (key, problem),
        other => panic!("expected a validation error for {rules}, got {other:?}"),
    }
}

#[test]
fn the_configuration_contract_compiles() {
    let c = parse(contract::RULES).unwrap();
    let spec = c.live.answer_spec();
    assert_eq!(spec.rules.len(), 5);
    assert_eq!(spec.rules[0].when.names.len(), 2);
    assert_eq!(spec.rules[0].pool.as_deref(), Some("a"));
    assert_eq!(
        spec.rules[1].when.source,
        ["198.51.100.0/24".parse().unwrap()]
    );
    assert_eq!(spec.rules[1].not.as_ref().unwrap().qtypes, [1]);
    assert_eq!(spec.rules[2].answers.len(), 2);
    assert!(spec.rules[2].when.names[0].exact);
    assert_eq!(
        spec.rules[3].when.transport,
        Some(TransportMatch::Udp),
        "tc matches UDP only"
    );
    let soa = spec.rules[4].soa.as_ref().unwrap();
    assert_eq!(soa.owner, b"\x04gone\x04test\0");
    assert_eq!(soa.ttl, 300);
    assert_eq!(
        c.live.rule[1].label(),
        "source=198.51.100.0/24,not(qtype=A),action=refused"
    );
}

#[test]
fn every_selector_compiles() {
    let c = parse(
        r#"
[[rule]]
source = ["10.0.0.0/8", "2001:db8::/32"]
listen = ["192.0.2.1:53"]
qname = "exact.test."
qname_suffix = "Below.Test."
qtype = ["A", "AAAA"]
qclass = "CH"
opcode = "query"
rd = true
do = false
edns = 0
query_size = [17, 512]
transport = "tcp"
action = "drop"
[[rule]]
edns = false
action = "nodata"
aa = true
ra = true
"#,
    )
    .unwrap();
    let s = &c.live.answer_spec().rules[0].when;
    assert_eq!(s.source.len(), 2);
    assert_eq!(s.listen, ["192.0.2.1:53".parse().unwrap()]);
    assert_eq!(
        s.names,
        [
            NameEntry {
                wire: b"\x05exact\x04test\0".to_vec(),
                exact: true
            },
            NameEntry {
                wire: b"\x05below\x04test\0".to_vec(),
                exact: false
            }
        ]
    );
    assert_eq!(s.qtypes, [1, 28]);
    assert_eq!(s.qclass, Some(3));
    assert_eq!(s.opcode, Some(0));
    assert_eq!((s.rd, s.dnssec_ok), (Some(true), Some(false)));
    assert_eq!(s.edns, Some(EdnsMatch::Version(0)));
    assert_eq!(s.query_size, Some((17, 512)));
    assert_eq!(s.transport, Some(TransportMatch::Tcp));
    let r = &c.live.answer_spec().rules[1];
    assert_eq!(r.when.edns, Some(EdnsMatch::Absent));
    assert_eq!(
        r.action,
        Action::NoError,
        "nodata is NOERROR without records"
    );
    assert!(r.aa && r.ra);
}

#[test]
fn bad_selectors_and_actions_name_their_key() {
    for (rules, key) in [
        (
            "[[rule]]\nqnmae = \"x.\"\naction = \"drop\"",
            "rule[0].qnmae",
        ),
        (
            "[[rule]]\nsource = [\"10.0.0.1/8\"]\naction = \"drop\"",
            "rule[0].source[0]",
        ),
        ("[[rule]]\nsource = []\naction = \"drop\"", "rule[0].source"),
        ("[[rule]]\nqname = []\naction = \"drop\"", "rule[0].qname"),
        (
            "[[rule]]\nqname = \"a..b\"\naction = \"drop\"",
            "rule[0].qname",
        ),
        (
            "[[rule]]\nqclass = \"XX\"\naction = \"drop\"",
            "rule[0].qclass",
        ),
        (
            "[[rule]]\nquery_size = [600, 12]\naction = \"drop\"",
            "rule[0].query_size",
        ),
        ("[[rule]]\nnot = { qtyp = \"A\" }\naction = \"drop\"", ""),
        (
            "[[rule]]\nqtype = \"A\"\nnot = {}\naction = \"drop\"",
            "rule[0].not",
        ),
        (
            "[[rule]]\nqtype = \"A\"\nnot = { qtype = \"A\" }\naction = \"drop\"",
            "rule[0].not",
        ),
        (
            "[[rule]]\nqtype = \"A\"\nnot = { qtype = \"BOGUS\" }\naction = \"drop\"",
            "rule[0].not.qtype",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"spoof\"",
            "rule[0].answers",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"spoof\"\nanswers = [\"MX 10 a.\"]",
            "rule[0].answers",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"spoof\"\nanswers = [\"CNAME a.\", \"A 1.2.3.4\"]",
            "rule[0].answers",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"drop\"\nanswers = [\"A 1.2.3.4\"]",
            "rule[0].answers",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"drop\"\nttl = 5",
            "rule[0].ttl",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"refused\"\nsoa = \"a. b. 1 2 3 4 5\"",
            "rule[0].soa",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"nxdomain\"\nsoa = \"a. b. 1 2 3 4 5\"",
            "rule[0].soa",
        ),
        (
            "[[rule]]\nqname_suffix = \"s.\"\naction = \"nxdomain\"\nsoa = \"a. b. 1 2 3\"",
            "rule[0].soa",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"nxdomain\"\nzone = \"s.\"",
            "rule[0].zone",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"drop\"\naa = true",
            "rule[0].aa",
        ),
        (
            "[[rule]]\nqname = \"s.\"\naction = \"forward\"\nra = true",
            "rule[0].ra",
        ),
        (
            "[[rule]]\ntransport = \"tcp\"\naction = \"tc\"",
            "rule[0].transport",
        ),
        (
            "[[rule]]\nqname_file = \"relative.txt\"\naction = \"drop\"",
            "rule[0].qname_file",
        ),
        (
            "[[rule]]\nqname_file = \"/missing.txt\"\naction = \"drop\"",
            "rule[0].qname_file",
        ),
    ] {
        match parse(rules) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{rules}"),
            Err(ConfigError::Syntax(m)) => {
                assert!(
                    key.is_empty() && m.contains("unknown field"),
                    "{rules}: {m}"
                )
            }
            Ok(_) => panic!("{rules} accepted"),
        }
    }
}

#[test]
fn unreachable_rules_are_refused_with_the_rule_that_hides_them() {
    let (key, why) =
        invalid("[[rule]]\naction = \"refused\"\n[[rule]]\nqtype = \"A\"\naction = \"drop\"");
    assert_eq!(key, "rule[1]");
    assert!(
        why.contains("rule[0]") && why.contains("every query"),
        "{why}"
    );
    let (key, why) = invalid(
        "[[rule]]\nqname_suffix = \"test.\"\naction = \"refused\"\n\
         [[rule]]\nqname = \"x.test.\"\nqtype = \"A\"\naction = \"drop\"",
    );
    assert_eq!(key, "rule[1]");
    assert!(why.contains("rule[0]"), "{why}");
    let (key, _) = invalid(
        "[[rule]]\nqtype = [\"A\", \"AAAA\"]\naction = \"refused\"\n\
         [[rule]]\nqtype = \"AAAA\"\nrd = true\naction = \"drop\"",
    );
    assert_eq!(key, "rule[1]");
    // Reachable: narrower first, a not on the wider one, tc (UDP only)
    // before a catch-all, different qtypes.
    for ok in [
        "[[rule]]\nqname = \"x.test.\"\naction = \"drop\"\n[[rule]]\nqname_suffix = \"test.\"\naction = \"refused\"",
        "[[rule]]\nqtype = \"A\"\nnot = { rd = true }\naction = \"drop\"\n[[rule]]\nqtype = \"A\"\naction = \"refused\"",
        "[[rule]]\nqname_suffix = \"t.\"\naction = \"tc\"\n[[rule]]\nqname_suffix = \"t.\"\naction = \"refused\"",
        "[[rule]]\nqtype = \"A\"\naction = \"drop\"\n[[rule]]\nqtype = \"AAAA\"\naction = \"refused\"",
        "[[rule]]\nqname_suffix = \"example.\"\naction = \"drop\"\n[[rule]]\nqname_suffix = \"badexample.\"\naction = \"refused\"",
    ] {
        parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let many = "[[rule]]\nqname = \"x.\"\naction = \"drop\"\n".repeat(MAX_RULES + 1);
    assert!(parse(&many).is_err());
}

#[test]
fn a_hundred_thousand_name_file_loads() {
    let mut text = String::from("# generated\n");
    for i in 0..100_000 {
        text.push_str(&format!("host{i}.block.example\n"));
    }
    text.push_str("=exact.example\n");
    let files = HashMap::from([("/etc/xdpdns/block.txt", text)]);
    let c = parse_with(
        "[[rule]]\nqname_file = \"/etc/xdpdns/block.txt\"\naction = \"nxdomain\"\n\
         [[rule]]\nqtype = \"A\"\naction = \"refused\"",
        &files,
    )
    .unwrap();
    let spec = c.live.answer_spec();
    assert_eq!(spec.rules[0].when.names.len(), 100_001);
    assert!(spec.rules[0].when.names[100_000].exact);
    assert_eq!(
        c.live.rule[0].label(),
        "file=/etc/xdpdns/block.txt,action=nxdomain"
    );
    let bad = HashMap::from([("/b.txt", "ok.example\nbad..example\n".to_string())]);
    let e = parse_with("[[rule]]\nqname_file = \"/b.txt\"\naction = \"drop\"", &bad).unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
    let empty = HashMap::from([("/e.txt", "# nothing\n".to_string())]);
    assert!(
        parse_with(
            "[[rule]]\nqname_file = \"/e.txt\"\naction = \"drop\"",
            &empty
        )
        .is_err()
    );
}

#[test]
fn ttl_clamps_are_ordered() {
    let e = parse("[forwarding]\nmin_ttl = 600\nmax_ttl = 60").unwrap_err();
    assert!(e.to_string().contains("forwarding.min_ttl"), "{e}");
    let c = parse("[forwarding]\nmin_ttl = 30\nmax_ttl = 3600").unwrap();
    let spec = c.live.answer_spec();
    assert_eq!((spec.min_ttl, spec.max_ttl), (30, 3600));
}
