use super::*;

const MINIMAL: &str = r#"
[xdp]
interface = "eth0"
[[listen]]
address = "192.0.2.1:53"
"#;

fn with(extra_top: &str, sections: &str) -> String {
    format!(
        "{extra_top}\n[xdp]\ninterface = \"eth0\"\n{sections}\n[[listen]]\naddress = \"192.0.2.1:53\"\n"
    )
}

fn err(text: &str) -> ConfigError {
    Config::from_toml(text).expect_err("configuration should be rejected")
}

fn invalid_key(text: &str) -> String {
    match err(text) {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected a validation error, got {other}"),
    }
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.fixed.instance, "default");
    assert_eq!(c.live.xdp.queues, QueueSelection::All);
    assert_eq!(c.fixed.xdp.mode, XdpMode::Auto);
    assert_eq!(
        c.fixed.xdp.pin_root,
        std::path::Path::new("/sys/fs/bpf/xdpdns")
    );
    assert_eq!(c.fixed.xsk.frames, 4096);
    assert_eq!(c.fixed.xsk.frame_size, 2048);
    assert_eq!(c.fixed.dataplane.user, "xdpdns-dp");
    assert!(!c.fixed.dataplane.keep_ipc_lock);
    assert_eq!(c.fixed.umem_bytes_per_queue(), 8 << 20);
    assert_eq!(c.live.answer_spec().default, Action::Refused);
}

#[test]
fn full_contract_parses() {
    let text = r#"
instance = "lab-1"
[xdp]
interface = "veth0"
queues = [0, 1]
mode = "generic"
pin_root = "/sys/fs/bpf/x"
[xsk]
frames = 1024
frame_size = 4096
[dataplane]
user = "nobody"
keep_ipc_lock = true
[[listen]]
address = "192.0.2.1:53"
[[listen]]
address = "[2001:db8::1]:5353"
[[rule]]
qname_suffix = "Example.COM."
qtype = "aaaa"
action = "nxdomain"
"#;
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.live.xdp.queues, QueueSelection::List(vec![0, 1]));
    assert_eq!(c.fixed.xdp.mode, XdpMode::Generic);
    assert_eq!(c.live.listen[1], "[2001:db8::1]:5353".parse().unwrap());
    let spec = c.live.answer_spec();
    assert_eq!(
        spec.rules[0].when.names,
        [NameEntry {
            wire: b"\x07example\x03com\0".to_vec(),
            exact: false
        }]
    );
    assert_eq!(spec.rules[0].when.qtypes, [28]);
    assert_eq!(spec.rules[0].action, Action::NxDomain);
}

#[test]
fn unknown_keys_are_errors_everywhere() {
    for text in [
        with("bogus = 1", ""),
        with("", "typo_key = 1"),
        with("", "[xsk]\nframez = 10"),
        with("", "[dataplane]\nusr = \"x\""),
    ] {
        let e = err(&text);
        assert!(
            matches!(&e, ConfigError::Syntax(m) if m.contains("unknown field")),
            "{text}: {e}"
        );
    }
}

#[test]
fn syntax_errors_carry_line_numbers() {
    let e = err("[xdp]\ninterface = \n");
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn missing_interface_is_named() {
    let e = err("[[listen]]\naddress = \"192.0.2.1:53\"\n[xdp]\n");
    assert!(e.to_string().contains("interface"), "{e}");
}

#[test]
fn queue_selection_forms() {
    let e = err(&with("", "queues = \"some\""));
    assert!(e.to_string().contains("\"all\""), "{e}");
    assert_eq!(invalid_key(&with("", "queues = []")), "xdp.queues");
    assert_eq!(invalid_key(&with("", "queues = [1, 1]")), "xdp.queues");
    assert!(err(&with("", "queues = [-1]")).to_string().contains("line"));
    assert_eq!(QueueSelection::All.resolve(3).unwrap(), vec![0, 1, 2]);
    assert_eq!(QueueSelection::List(vec![1]).resolve(2).unwrap(), vec![1]);
    let e = QueueSelection::List(vec![0, 2]).resolve(2).unwrap_err();
    assert!(e.contains("queue 2 does not exist"), "{e}");
}

#[test]
fn bad_enums_list_the_choices() {
    let e = err(&with("", "mode = \"turbo\""));
    assert!(e.to_string().contains("generic"), "{e}");
    let e = err(&with("", "[xsk]\nbind_mode = \"fast\""));
    assert!(e.to_string().contains("zero-copy"), "{e}");
}

#[test]
fn umem_geometry_is_checked() {
    assert_eq!(invalid_key(&with("", "[xsk]\nframes = 1000")), "xsk.frames");
    assert_eq!(invalid_key(&with("", "[xsk]\nframes = 32")), "xsk.frames");
    assert_eq!(
        invalid_key(&with("", "[xsk]\nframe_size = 3000")),
        "xsk.frame_size"
    );
    assert_eq!(
        invalid_key(&with("", "[xsk]\nframes = 64\nbatch_size = 64")),
        "xsk.batch_size"
    );
    assert_eq!(
        invalid_key(&with("", "[xsk]\nbatch_size = 0")),
        "xsk.batch_size"
    );
}

#[test]
fn listen_addresses_are_checked() {
    let base = "[xdp]\ninterface = \"eth0\"\n";
    assert_eq!(invalid_key(base), "listen");
    let bad_syntax = format!("{base}[[listen]]\naddress = \"192.0.2.1\"");
    assert!(err(&bad_syntax).to_string().contains("[2001:db8::1]:53"));
    for (addr, key) in [
        ("0.0.0.0:53", "listen[0].address"),
        ("[::]:53", "listen[0].address"),
        ("192.0.2.1:0", "listen[0].address"),
        ("224.0.0.1:53", "listen[0].address"),
    ] {
        let text = format!("{base}[[listen]]\naddress = \"{addr}\"");
        assert_eq!(invalid_key(&text), key, "{addr}");
    }
    let dup = format!("{MINIMAL}[[listen]]\naddress = \"192.0.2.1:53\"");
    assert_eq!(invalid_key(&dup), "listen[1].address");
}

#[test]
fn names_used_in_paths_are_checked() {
    for name in ["", "a/b", "..", "-x", "with space", &"x".repeat(65)] {
        assert_eq!(
            invalid_key(&with(&format!("instance = {name:?}"), "")),
            "instance"
        );
    }
    let text = MINIMAL.replace("eth0", "an-interface-name-too-long");
    assert_eq!(invalid_key(&text), "xdp.interface");
    assert_eq!(
        invalid_key(&with("", "pin_root = \"rel/path\"")),
        "xdp.pin_root"
    );
    assert_eq!(
        invalid_key(&with("runtime_dir = \"run\"", "")),
        "runtime_dir"
    );
}

#[test]
fn dataplane_section_is_checked() {
    assert_eq!(
        invalid_key(&with("", "[dataplane]\nuser = \"root\"")),
        "dataplane.user"
    );
    assert_eq!(
        invalid_key(&with("", "[dataplane]\nuser = \"\"")),
        "dataplane.user"
    );
    assert_eq!(
        invalid_key(&with("", "[dataplane]\nbinary = \"xdpdns-dataplane\"")),
        "dataplane.binary"
    );
    assert_eq!(
        invalid_key(&with("", "[dataplane]\nstats_interval_ms = 5")),
        "dataplane.stats_interval_ms"
    );
    assert_eq!(
        invalid_key(&with("", "[dataplane]\ncpus = [0, 4096]")),
        "dataplane.cpus"
    );
    assert_eq!(
        invalid_key(&with("", "[dataplane]\nedns_udp_size = 100")),
        "dataplane.edns_udp_size"
    );
}

#[test]
fn rules_are_checked() {
    let rule = |body: &str| format!("{MINIMAL}\n[[rule]]\n{body}");
    assert_eq!(
        invalid_key(&rule("qtype = \"BOGUS\"\naction = \"drop\"")),
        "rule[0].qtype"
    );
    assert_eq!(
        invalid_key(&rule("qname_suffix = \"a..b\"\naction = \"drop\"")),
        "rule[0].qname_suffix"
    );
    assert!(
        err(&rule("action = \"explode\""))
            .to_string()
            .contains("refused")
    );
    assert!(err(&rule("qtype = \"A\"")).to_string().contains("action"));
    for bad in ["\"bogus\"", "\"16\"", "\"-1\""] {
        assert_eq!(
            invalid_key(&rule(&format!("opcode = {bad}\naction = \"refused\""))),
            "rule[0].opcode",
            "{bad}"
        );
    }
    let c = Config::from_toml(&rule("opcode = \"NOTIFY\"\naction = \"refused\"")).unwrap();
    assert_eq!(c.live.answer_spec().rules[0].when.opcode, Some(4));
    let c = Config::from_toml(&rule("opcode = \"15\"\naction = \"notimp\"")).unwrap();
    assert_eq!(c.live.answer_spec().rules[0].when.opcode, Some(15));
}

#[test]
fn shipped_example_configuration_is_valid() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/xdpdns.toml"
    ));
    let c = Config::from_toml(text).expect("packaging/xdpdns.toml must stay valid");
    assert_eq!(c.fixed.instance, "default");
    assert_eq!(c.live.listen.len(), 2);
}

#[test]
fn every_commented_out_key_of_the_shipped_example_is_valid_with_its_default() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/xdpdns.toml"
    ));
    // Uncomment the documented sections and keys ("# [..]", "# key = ..").
    let is_key = |l: &str| {
        let l = l.trim_start_matches("# ");
        l.starts_with('[')
            || l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
    };
    let uncommented: Vec<&str> = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_key(l) => rest,
            _ => l,
        })
        .collect();
    let blocklist = |p: &std::path::Path| {
        assert_eq!(p, std::path::Path::new("/etc/xdpdns/blocklist.txt"));
        Ok("ads.example\n=host.example\n".to_string())
    };
    let c = Config::from_toml_with(&uncommented.join("\n"), &blocklist)
        .expect("the commented-out keys must be valid");
    assert_eq!(c.live.backend.len(), 1);
    assert_eq!(c.live.rule.len(), 7, "every rule example");
    assert!(c.fixed.metrics.is_some());
    let d = Config::from_toml(text).unwrap();
    assert_eq!(
        c.live.forwarding, d.live.forwarding,
        "the example shows the defaults"
    );
    assert_eq!(
        (
            c.fixed.forwarding.port_base,
            c.fixed.forwarding.max_in_flight
        ),
        (
            d.fixed.forwarding.port_base,
            d.fixed.forwarding.max_in_flight
        ),
        "the example shows the defaults"
    );
    assert_eq!(
        c.live.supervisor, d.live.supervisor,
        "the example shows the defaults"
    );
    assert_eq!(c.live.backend[0].health, Default::default());
}

#[test]
fn backends_pools_and_forwarding_parse_with_defaults() {
    let text = format!(
        "{MINIMAL}\n[[backend]]\naddress = \"192.0.2.2:53\"\nmac = \"00:11:22:33:44:55\"\n[backend.health]\nqname = \"example.\"\n\
         [[backend]]\naddress = \"[2001:db8::2]:53\"\npool = \"v6\"\nweight = 3\nxsk = false\nsource = \"2001:db8::1\"\n\
         [[pool]]\nname = \"v6\"\npolicy = \"consistent-hash\"\n[forwarding]\ntimeout_action = \"servfail\"\n"
    );
    let c = Config::from_toml(&text).unwrap();
    assert_eq!(c.live.backend.len(), 2);
    let b = &c.live.backend[0];
    assert_eq!(b.pool, "default");
    assert_eq!(b.weight, 1);
    assert!(b.xsk);
    assert_eq!(b.mac, Some([0, 0x11, 0x22, 0x33, 0x44, 0x55]));
    assert_eq!(b.health.qname, "example.");
    assert_eq!(b.health.qtype, "A");
    assert_eq!(
        (
            b.health.interval_ms,
            b.health.timeout_ms,
            b.health.failures,
            b.health.successes
        ),
        (1000, 1000, 3, 1)
    );
    assert_eq!(c.live.pool[0].policy, Policy::ConsistentHash);
    assert_eq!(c.live.forwarding.timeout_ms, 2000);
    assert_eq!(c.live.forwarding.timeout_action, FailAction::ServFail);
    assert_eq!(c.live.forwarding.all_down_action, FailAction::ServFail);
}

#[test]
fn backend_errors_name_their_key() {
    let with_backend = |body: &str| format!("{MINIMAL}\n[[backend]]\n{body}\n");
    let cases = [
        ("address = \"192.0.2.1:53\"", "backend[0].address"),
        ("address = \"0.0.0.0:53\"", "backend[0].address"),
        (
            "address = \"192.0.2.2:53\"\npool = \"nope\"",
            "backend[0].pool",
        ),
        (
            "address = \"192.0.2.2:53\"\nweight = 0",
            "backend[0].weight",
        ),
        (
            "address = \"192.0.2.2:53\"\nsource = \"2001:db8::1\"",
            "backend[0].source",
        ),
        (
            "address = \"192.0.2.2:53\"\n[backend.health]\nqtype = \"NOPE\"",
            "backend[0].health.qtype",
        ),
        (
            "address = \"192.0.2.2:53\"\n[backend.health]\nfailures = 0",
            "backend[0].health",
        ),
    ];
    for (body, key) in cases {
        assert_eq!(invalid_key(&with_backend(body)), key, "{body}");
    }
    let e = err(&with_backend("address = \"192.0.2.2:53\"\nmac = \"zz\""));
    assert!(e.to_string().contains("MAC"), "{e}");
    let e = err(&with_backend("address = \"192.0.2.2:53\"\nbogus = 1"));
    assert!(e.to_string().contains("unknown field"), "{e}");
    assert_eq!(
        invalid_key(&format!("{MINIMAL}\n[forwarding]\nmax_in_flight = 100")),
        "forwarding.max_in_flight"
    );
    assert_eq!(
        invalid_key(&format!(
            "{MINIMAL}\n[[pool]]\nname = \"a\"\n[[pool]]\nname = \"a\""
        )),
        "pool[1].name"
    );
}

#[test]
fn forwarding_is_the_default_action_only_with_backends() {
    assert_eq!(
        Config::from_toml(MINIMAL)
            .unwrap()
            .live
            .answer_spec()
            .default,
        Action::Refused
    );
    let text = format!(
        "{MINIMAL}\n[[backend]]\naddress = \"192.0.2.2:53\"\n[[rule]]\nqtype = \"ANY\"\naction = \"refused\"\n"
    );
    let spec = Config::from_toml(&text).unwrap().live.answer_spec();
    assert_eq!(spec.default, Action::Forward);
    assert_eq!(spec.rules[0].action, Action::Refused);
}

#[test]
fn the_fixed_part_names_every_key_that_differs() {
    let a = Config::from_toml(MINIMAL).unwrap();
    assert!(a.fixed.differences(&a.fixed.clone()).is_empty());
    let b = Config::from_toml(&with(
        "instance = \"other\"",
        "mode = \"generic\"\n[xsk]\nframes = 1024\n[dataplane]\nuser = \"daemon\"\n[forwarding]\nport_base = 40000",
    ))
    .unwrap();
    assert_eq!(
        a.fixed.differences(&b.fixed),
        [
            "instance",
            "xdp.mode",
            "xsk.frames",
            "dataplane.user",
            "forwarding.port_base"
        ]
    );
    // Live settings are not fixed ones.
    let c = Config::from_toml(&with("", "redirect = false\n[xsk]\nidle_nap_us = 0")).unwrap();
    assert!(a.fixed.differences(&c.fixed).is_empty());
    assert_ne!(a.live, c.live);
}

#[test]
fn the_acl_defaults_to_dnsdists_private_ranges_and_parses() {
    let c = Config::from_toml(MINIMAL).unwrap();
    let acl = &c.live.acl;
    assert_eq!(acl.action, AclAction::Drop);
    let allow: Vec<String> = acl.allow.iter().map(|p| p.to_string()).collect();
    assert_eq!(allow, acl::DEFAULT_ALLOW);
    assert!(!acl.open_to_a_family());
    let allowed = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        acl.allow.iter().any(|p| p.contains(ip))
    };
    assert!(allowed("10.1.2.3") && allowed("::1") && allowed("fd00::1"));
    assert!(!allowed("192.0.2.7") && !allowed("2001:db8::1") && !allowed("8.8.8.8"));

    let open = Config::from_toml(&with(
        "",
        "[acl]\nallow = [\"0.0.0.0/0\", \"::/0\", \"0.0.0.0/0\"]\naction = \"refused\"",
    ))
    .unwrap();
    assert!(open.live.acl.open_to_everyone());
    assert_eq!(open.live.acl.allow.len(), 2, "duplicates collapse");
    assert_eq!(open.live.acl.action, AclAction::Refused);
    let nobody = Config::from_toml(&with("", "[acl]\nallow = []")).unwrap();
    assert!(nobody.live.acl.allow.is_empty());
}

#[test]
fn bad_acls_are_refused_with_their_key() {
    for (acl, key) in [
        ("allow = [\"10.0.0.0/33\"]", "acl.allow[0]"),
        ("allow = [\"10.0.0.0/8\", \"nonsense\"]", "acl.allow[1]"),
        ("allow = [\"10.0.0.1/8\"]", "acl.allow[0]"),
    ] {
        assert_eq!(
            invalid_key(&with("", &format!("[acl]\n{acl}"))),
            key,
            "{acl}"
        );
    }
    let many: Vec<String> = (0..=acl::MAX_ACL_PREFIXES)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    assert_eq!(
        invalid_key(&with("", &format!("[acl]\nallow = [{}]", many.join(",")))),
        "acl.allow"
    );
    let e = err(&with("", "[acl]\naction = \"reject\""));
    assert!(e.to_string().contains("drop"), "{e}");
    let e = err(&with("", "[acl]\nallow = []\ndeny = []"));
    assert!(e.to_string().contains("unknown field"), "{e}");
}

#[test]
fn the_forwarding_port_range_is_checked() {
    let fwd = |body: &str| {
        format!("{MINIMAL}\n[[backend]]\naddress = \"192.0.2.2:53\"\n[forwarding]\n{body}\n")
    };
    let c = Config::from_toml(&fwd("")).unwrap();
    assert_eq!(
        (
            c.fixed.forwarding.port_base,
            c.fixed.forwarding.ports,
            c.fixed.forwarding.backend_sockets
        ),
        (30000, 1024, 64)
    );
    for (body, key) in [
        ("port_base = 65000\nports = 1024", "forwarding.ports"),
        ("port_base = 64512\nports = 1025", "forwarding.ports"),
        ("ports = 0", "forwarding.ports"),
        ("ports = 40000", "forwarding.ports"),
        ("port_base = 100", "forwarding.port_base"),
        ("port_base = 1", "forwarding.port_base"),
        ("backend_sockets = 0", "forwarding.backend_sockets"),
        ("backend_sockets = 5000", "forwarding.backend_sockets"),
    ] {
        assert_eq!(invalid_key(&fwd(body)), key, "{body}");
    }
    // The last port may be 65535; one past is refused (it wrapped to 0).
    assert!(Config::from_toml(&fwd("port_base = 64512\nports = 1024")).is_ok());
    // A listen port inside the range is refused.
    let text = "[xdp]\ninterface = \"eth0\"\n[[listen]]\naddress = \"192.0.2.1:30010\"\n\
         [[backend]]\naddress = \"192.0.2.2:53\"\n";
    let e = err(text);
    assert!(e.to_string().contains("include listen port 30010"), "{e}");
}

#[test]
fn more_listen_addresses_than_the_program_counts_are_refused() {
    let mut text = String::from("[xdp]\ninterface = \"eth0\"\n");
    for i in 0..=crate::maps::MAX_LISTEN {
        text.push_str(&format!(
            "[[listen]]\naddress = \"10.0.{}.{}:53\"\n",
            i / 250,
            i % 250 + 1
        ));
    }
    assert_eq!(invalid_key(&text), "listen");
}

#[test]
fn socket_pools_must_fit_what_a_dataplane_takes() {
    let mut text = format!("{MINIMAL}\n[forwarding]\nbackend_sockets = 1024\n");
    for i in 0..15 {
        text.push_str(&format!(
            "[[backend]]\naddress = \"192.0.2.{}:53\"\n",
            10 + i
        ));
    }
    assert!(Config::from_toml(&text).is_ok(), "15 x 1024 + listen fit");
    text.push_str("[[backend]]\naddress = \"192.0.2.99:53\"\n");
    assert_eq!(invalid_key(&text), "forwarding.backend_sockets");
}

#[test]
fn tcp_limits_default_and_are_checked() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.fixed.tcp.workers, 1);
    assert_eq!(c.fixed.tcp.user, "xdpdns-tcp");
    let l = c.live.tcp;
    assert_eq!(
        (
            l.max_connections,
            l.max_connections_per_client,
            l.idle_timeout_ms,
            l.io_timeout_ms
        ),
        (4096, 32, 10_000, 5_000)
    );
    for (body, key) in [
        ("workers = 0", "tcp.workers"),
        ("max_connections = 0", "tcp.max_connections"),
        (
            "max_connections = 10\nmax_connections_per_client = 11",
            "tcp.max_connections_per_client",
        ),
        ("idle_timeout_ms = 5", "tcp.idle_timeout_ms"),
        ("io_timeout_ms = 0", "tcp.io_timeout_ms"),
        (
            "max_in_flight_per_connection = 0",
            "tcp.max_in_flight_per_connection",
        ),
        ("backend_connections = 100", "tcp.backend_connections"),
        ("user = \"root\"", "tcp.user"),
        ("user = \"xdpdns-dp\"", "tcp.user"),
    ] {
        assert_eq!(
            invalid_key(&with("", &format!("[tcp]\n{body}"))),
            key,
            "{body}"
        );
    }
    let e = err(&with("", "[tcp]\nmax_conections = 3"));
    assert!(e.to_string().contains("unknown field"), "{e}");
    // Limits reload; who runs the workers does not.
    let a = Config::from_toml(MINIMAL).unwrap();
    let b = Config::from_toml(&with("", "[tcp]\nidle_timeout_ms = 900\nworkers = 2")).unwrap();
    assert_eq!(a.fixed.differences(&b.fixed), ["tcp.workers"]);
    assert_eq!(b.live.tcp.idle_timeout_ms, 900);
}

#[test]
fn syntax_errors_say_where_without_quoting_the_file() {
    let e = err("secret = \"hunter2\"\n[xdp\ninterface = \"eth0\"\n");
    let m = e.to_string();
    assert!(m.starts_with("line 2, column"), "{m}");
    assert!(
        !m.contains("hunter2") && !m.contains("[xdp"),
        "no file content: {m}"
    );
    let e = err("[xdp]\ninterface = \"eth0\"\nsecret_key = \"hunter2\"\n");
    let m = e.to_string();
    assert!(m.contains("line 3") && m.contains("unknown field"), "{m}");
    assert!(!m.contains("hunter2"), "{m}");
}

#[test]
fn limits_and_blocks_compile_and_bad_ones_are_refused() {
    let c = Config::from_toml(&format!(
        "{MINIMAL}\n[limits]\nqps_per_client = 200\nburst = 400\nv6_prefix = 48\n\
         exempt = [\"10.10.0.0/16\"]\n[[block]]\nprefix = \"198.51.100.0/24\"\n\
         [[block]]\nprefix = \"2001:db8:bad::/48\"\naction = \"drop\"\n"
    ))
    .unwrap();
    let a = &c.live.abuse;
    let l = a.limit.unwrap();
    assert_eq!(
        (l.qps, l.burst, l.v4_prefix, l.v6_prefix),
        (200, 400, 32, 48)
    );
    assert_eq!(a.exempt.len(), 1);
    assert_eq!(a.blocks.len(), 2);
    assert!(a.tcp_blocks.is_empty(), "UDP only unless tcp = true");
    let c = Config::from_toml(&format!(
        "{MINIMAL}\n[[block]]\nprefix = \"198.51.100.0/24\"\ntcp = true\n[[block]]\nprefix = \"203.0.113.0/24\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.live.abuse.tcp_blocks,
        vec!["198.51.100.0/24".parse().unwrap()]
    );
    assert!(a.answered_blocks.is_empty(), "dropped by default");
    let c = Config::from_toml(&format!(
        "{MINIMAL}\n[[block]]\nprefix = \"198.51.100.0/24\"\naction = \"refused\"\n\
         [[block]]\nprefix = \"203.0.113.0/24\"\naction = \"tc\"\n[[block]]\nprefix = \"192.0.2.0/24\"\n\
         [[dynamic_block]]\nqps = 100\naction = \"tc\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.live.abuse.answered_blocks,
        vec![
            ("198.51.100.0/24".parse().unwrap(), BlockAction::Refused),
            ("203.0.113.0/24".parse().unwrap(), BlockAction::Tc)
        ]
    );
    assert_eq!(c.live.abuse.dynamic[0].action, BlockAction::Tc);
    assert!(!a.dry_run);
    assert!(
        a.describe().contains("200 q/s (burst 400)"),
        "{}",
        a.describe()
    );
    // Defaults: burst one second's worth, /32 and /56.
    let c = Config::from_toml(&format!("{MINIMAL}\n[limits]\nqps_per_client = 50\n")).unwrap();
    let l = c.live.abuse.limit.unwrap();
    assert_eq!((l.burst, l.v4_prefix, l.v6_prefix), (50, 32, 56));
    // None at all without the sections.
    assert_eq!(
        Config::from_toml(MINIMAL).unwrap().live.abuse,
        Abuse::default()
    );

    let limits = |body: &str| format!("{MINIMAL}\n[limits]\n{body}");
    for (body, key) in [
        ("qps_per_client = 0", "limits.qps_per_client"),
        ("qps_per_client = 10\nv4_prefix = 33", "limits.v4_prefix"),
        ("qps_per_client = 10\nv6_prefix = 0", "limits.v6_prefix"),
        (
            "qps_per_client = 10\naction = \"tc\"\nslip = 2",
            "limits.slip",
        ),
        ("qps_per_client = 10\nslip = 1001", "limits.slip"),
        (
            "qps_per_client = 10\nexempt = [\"10.0.0.0/33\"]",
            "limits.exempt[0]",
        ),
    ] {
        assert_eq!(invalid_key(&limits(body)), key, "{body}");
    }
    assert!(
        err(&limits("burst = 3"))
            .to_string()
            .contains("qps_per_client")
    );
    assert!(
        err(&limits("qps_per_client = 1\nbogus = 1"))
            .to_string()
            .contains("bogus")
    );
    let block = |body: &str| format!("{MINIMAL}\n[[block]]\n{body}");
    assert_eq!(
        invalid_key(&block("prefix = \"nonsense\"")),
        "block[0].prefix"
    );
    assert!(
        err(&block("prefix = \"192.0.2.0/24\"\naction = \"reject\""))
            .to_string()
            .contains("expected one of `drop`, `refused`, `tc`")
    );
    assert_eq!(
        invalid_key(&format!(
            "{MINIMAL}\n[limits]\nqps_per_client = 1\nexempt = [\"192.0.2.0/24\"]\n[[block]]\nprefix = \"192.0.2.0/24\"\n"
        )),
        "block[0].prefix"
    );
}

#[test]
fn dynamic_block_rules_compile_and_bad_ones_are_refused() {
    let c = Config::from_toml(&format!(
        "{MINIMAL}\n[[dynamic_block]]\nrcode = \"nxdomain\"\nrate = 50\nwindow_s = 5\nblock_s = 60\n\
         [[dynamic_block]]\nqps = 1000\n"
    ))
    .unwrap();
    let a = &c.live.abuse;
    assert_eq!(a.dynamic.len(), 2);
    assert_eq!(a.dynamic[0].counted, Counted::Rcode(3));
    assert_eq!(
        (a.dynamic[1].counted, a.dynamic[1].rate),
        (Counted::Answers, 1000)
    );
    assert_eq!(
        (a.dynamic[1].window_s, a.dynamic[1].block_s),
        (5, 60),
        "defaults"
    );
    let c = Config::from_toml(&format!("{MINIMAL}\n[[dynamic_block]]\nbytes = 100000\n")).unwrap();
    assert_eq!(c.live.abuse.dynamic[0].counted, Counted::Bytes);
    assert_eq!(
        c.live.answer_spec().tally,
        Some(TallySpec {
            v4_prefix: 32,
            v6_prefix: 56,
            suffixes: Vec::new(),
        }),
        "dataplanes tally answers only when a rule needs it"
    );
    assert_eq!(
        Config::from_toml(MINIMAL).unwrap().live.answer_spec().tally,
        None
    );
    let d = |body: &str| format!("{MINIMAL}\n[[dynamic_block]]\n{body}");
    for (body, key) in [
        ("rcode = \"NOERROR\"\nrate = 5", "dynamic_block[0].rcode"),
        ("rcode = \"NXDOMAIN\"", "dynamic_block[0].rate"),
        ("rate = 5", "dynamic_block[0].rcode"),
        (
            "qps = 5\nrcode = \"NXDOMAIN\"\nrate = 5",
            "dynamic_block[0].qps",
        ),
        ("qps = 0", "dynamic_block[0].rate"),
        ("qps = 5\nwindow_s = 61", "dynamic_block[0].window_s"),
        ("qps = 5\nblock_s = 0", "dynamic_block[0].block_s"),
        ("qps = 5\nbytes = 5", "dynamic_block[0].bytes"),
        ("qps = 5\nsuffix = \"bad..name\"", "dynamic_block[0].suffix"),
        ("qps = 5\nsuffix = \".\"", "dynamic_block[0].suffix"),
    ] {
        assert_eq!(invalid_key(&d(body)), key, "{body}");
    }
    let many: String = (0..17).map(|_| "[[dynamic_block]]\nqps = 5\n").collect();
    assert_eq!(invalid_key(&format!("{MINIMAL}\n{many}")), "dynamic_block");
    let suffixed: String = (0..5)
        .map(|i| format!("[[dynamic_block]]\nqps = 5\nsuffix = \"z{i}.test\"\n"))
        .collect();
    assert_eq!(
        invalid_key(&format!("{MINIMAL}\n{suffixed}")),
        "dynamic_block[4].suffix",
        "at most 4 rules with a suffix"
    );
}

#[test]
fn dynamic_rules_with_a_suffix_count_apart_under_it() {
    let c = Config::from_toml(&format!(
        "{MINIMAL}\n[[dynamic_block]]\nrcode = \"NXDOMAIN\"\nrate = 1000\n\
         [[dynamic_block]]\nrcode = \"NXDOMAIN\"\nrate = 50\nsuffix = \"Victim.Test.\"\n\
         [[dynamic_block]]\nbytes = 9000\nsuffix = \"amp.test\"\n"
    ))
    .unwrap();
    let a = &c.live.abuse;
    assert_eq!(
        a.dynamic.iter().map(|r| r.under).collect::<Vec<_>>(),
        [None, Some(0), Some(1)]
    );
    let tally = c.live.answer_spec().tally.unwrap();
    assert_eq!(
        tally.suffixes,
        [
            SuffixTally {
                wire: b"\x06victim\x04test\0".to_vec(),
                counted: Counted::Rcode(3)
            },
            SuffixTally {
                wire: b"\x03amp\x04test\0".to_vec(),
                counted: Counted::Bytes
            }
        ]
    );
}

#[test]
fn forwarding_rules_name_a_declared_pool() {
    let base = format!(
        "{MINIMAL}\n[[backend]]\naddress = \"192.0.2.53:53\"\npool = \"a\"\n[[backend]]\naddress = \"192.0.2.54:53\"\n\
         [[pool]]\nname = \"a\"\n"
    );
    let c = Config::from_toml(&format!(
        "{base}[[rule]]\nqname_suffix = \"a.test.\"\naction = \"forward\"\npool = \"a\"\n"
    ))
    .unwrap();
    assert_eq!(c.live.answer_spec().rules[0].pool.as_deref(), Some("a"));
    assert_eq!(
        c.live.rule[0].label(),
        "suffix=a.test.,action=forward,pool=a"
    );
    assert_eq!(
        invalid_key(&format!(
            "{base}[[rule]]\naction = \"forward\"\npool = \"nope\"\n"
        )),
        "rule[0].pool"
    );
    assert_eq!(
        invalid_key(&format!(
            "{base}[[rule]]\naction = \"refused\"\npool = \"a\"\n"
        )),
        "rule[0].pool"
    );
    assert!(
        Config::from_toml(&format!(
            "{base}[[rule]]\naction = \"forward\"\npool = \"default\"\n"
        ))
        .is_ok()
    );
}

#[test]
fn the_cache_section_compiles_and_bad_values_are_refused() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.fixed.cache_slots, 0, "off by default");
    let c = Config::from_toml(&format!(
        "{MINIMAL}\n[cache]\nentries = 1000\nmin_ttl = 10\nmax_ttl = 600\nnegative_ttl = 60\nservfail_ttl = 0\nstale_ttl = 30\n"
    ))
    .unwrap();
    assert_eq!(c.fixed.cache_slots, 1024, "a power of two");
    assert_eq!(
        c.live.cache,
        CacheTtls {
            min: 10,
            max: 600,
            negative: 60,
            servfail: 0,
            stale: 30
        }
    );
    let cache = |body: &str| format!("{MINIMAL}\n[cache]\n{body}");
    for (body, key) in [
        ("entries = 16777217", "cache.entries"),
        ("entries = 8\nmax_ttl = 0", "cache.max_ttl"),
        ("entries = 8\nmin_ttl = 100\nmax_ttl = 50", "cache.min_ttl"),
        ("entries = 8\nstale_ttl = 700000", "cache.stale_ttl"),
    ] {
        assert_eq!(invalid_key(&cache(body)), key, "{body}");
    }
    assert!(
        err(&cache("entries = 8\nsize = 3"))
            .to_string()
            .contains("size")
    );
    let small = Config::from_toml(&cache("entries = 8")).unwrap();
    let big = Config::from_toml(&cache("entries = 16")).unwrap();
    assert_eq!(
        small.fixed.differences(&big.fixed),
        ["cache.entries"],
        "resizing needs a restart"
    );
    let ttl = Config::from_toml(&cache("entries = 8\nmax_ttl = 60")).unwrap();
    assert!(
        small.fixed.differences(&ttl.fixed).is_empty(),
        "TTLs reload live"
    );
    let pools = Config::from_toml(&format!(
        "{MINIMAL}\n[[backend]]\naddress = \"192.0.2.53:53\"\npool = \"a\"\n[[pool]]\nname = \"a\"\ncache = false\n"
    ))
    .unwrap();
    assert!(!pools.live.pool[0].cache);
}
