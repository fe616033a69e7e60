//! The backend leg against an off-path attacker: forwarded queries leave
//! from source ports and with IDs nobody can predict, and replies that do
//! not match what was sent (port, ID, question, source) are counted and
//! never reach a client.

use std::time::Duration;

use xdpdns_netns_tests::*;

const RECORDER: &str = "192.0.2.20";

/// Queries kxdpgun sends (its names end in example.com), as the backend saw them.
fn gun_queries(seen: Vec<Seen>) -> Vec<Seen> {
    seen.into_iter()
        .filter(|s| s.qname.ends_with(b"\x07example\x03com\x00"))
        .collect()
}

fn recording_config(lab: &Lab, instance: &str, backend_extra: &str, extra: &str) -> String {
    lab.config(
        instance,
        &format!(
            "[[backend]]\naddress = \"{RECORDER}:53\"\n{backend_extra}\n\
             [backend.health]\nqname = \"health.test.\"\ninterval_ms = 600000\n{extra}"
        ),
    )
}

/// Sends `qps` queries a second for `secs` from the client and waits.
fn load(lab: &Lab, qps: u64, secs: u64) -> anyhow::Result<Load> {
    Lab::kxdpgun_result(lab.kxdpgun(qps, secs, SERVER_V4)?)
}

#[test]
#[ignore = "needs root: run by make test"]
fn forwarded_queries_leave_from_random_ports_with_unpredictable_ids_also_after_a_restart()
-> anyhow::Result<()> {
    let lab = Lab::new("spread")?;
    lab.client_addr(&format!("{RECORDER}/24"), CLIENT_IF)?;
    let recorder = RecordingBackend::start(&lab, &format!("{RECORDER}:53"))?;
    let server = lab.start("p", &recording_config(&lab, "p", "", ""))?;
    server.wait_status("backend resolved", |s| s["backends"][0]["mac"].is_string())?;

    let first = load(&lab, 8000, 1)?;
    let seen = gun_queries(recorder.finish()?);
    let spread = Spread::of(&seen);
    assert!(
        seen.len() >= 4000,
        "forwarded {} of {first:?}: {:#}",
        seen.len(),
        server.status()?
    );
    assert!(
        spread.distinct_ports >= 1000,
        "source ports drawn from the 1024 of the range: {spread:?}"
    );
    assert!(
        spread.ids_look_random(),
        "no counter in the IDs: {spread:?}"
    );
    let (lo, hi) = (30000, 30000 + 1024);
    assert!(
        seen.iter()
            .all(|s| (lo..hi).contains(&s.from.port()) && s.from.ip().to_string() == SERVER_V4),
        "every query left from our address and the forwarding range"
    );

    // Fresh dataplanes draw from fresh keys: still no pattern.
    for q in ["0", "1"] {
        let out = server.cli(&["restart-queue", q]);
        assert!(out.status.success(), "{out:?}");
    }
    server.wait_status("both queues replaced and registered", |s| {
        s["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .all(|q| q["restarts"] == 1 && q["registered"] == true)
        })
    })?;
    let recorder = RecordingBackend::start(&lab, &format!("{RECORDER}:53"))?;
    load(&lab, 8000, 1)?;
    let after = gun_queries(recorder.finish()?);
    let spread = Spread::of(&after);
    assert!(
        after.len() >= 4000,
        "forwarded {} after the restart",
        after.len()
    );
    assert!(
        spread.distinct_ports >= 1000,
        "after the restart: {spread:?}"
    );
    assert!(spread.ids_look_random(), "after the restart: {spread:?}");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn socket_backends_draw_a_socket_and_an_id_per_query() -> anyhow::Result<()> {
    let lab = Lab::new("spreadsock")?;
    lab.client_addr(&format!("{RECORDER}/24"), CLIENT_IF)?;
    let recorder = RecordingBackend::start(&lab, &format!("{RECORDER}:53"))?;
    // kxdpgun sends on one queue, so one dataplane forwards it all: 1024
    // sockets there (the default, 64, gives 64 ports per queue).
    let cfg = recording_config(
        &lab,
        "k",
        "xsk = false",
        "[forwarding]\nbackend_sockets = 1024\n",
    );
    let server = lab.start("k", &cfg)?;
    server.wait_status("backend up", |s| s["backends"][0]["up"] == true)?;
    let sent = load(&lab, 8000, 1)?;
    let seen = gun_queries(recorder.finish()?);
    let spread = Spread::of(&seen);
    assert!(seen.len() >= 4000, "forwarded {} of {sent:?}", seen.len());
    assert!(
        spread.distinct_ports >= 1000,
        "one of 1024 sockets drawn per query: {spread:?}"
    );
    assert!(spread.ids_look_random(), "{spread:?}");
    Ok(())
}

fn f_u64(s: &serde_json::Value, counter: &str) -> u64 {
    s["totals"]["forward"][counter].as_u64().unwrap_or(0)
}

/// Sends one query for `qname` from the client and returns every datagram
/// that comes back within a second of the first (or of sending).
fn ask_raw(lab: &Lab, qname: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let sock = lab.in_ns(false, || Ok(std::net::UdpSocket::bind((CLIENT_V4, 0))?))?;
    let mut q = vec![0x4b, 0x1d, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in qname.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, (SERVER_V4, 53))?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(buf[..n].to_vec());
        sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    }
    Ok(got)
}

/// Exactly one answer, the genuine one (NXDOMAIN, the client's ID).
fn only_the_genuine_answer(got: &[Vec<u8>]) {
    assert_eq!(got.len(), 1, "answers: {got:02x?}");
    let a = &got[0];
    assert_eq!(&a[0..2], &[0x4b, 0x1d], "the client's own ID");
    assert_eq!(a[3] & 0x0f, 3, "NXDOMAIN, not a forged SERVFAIL: {a:02x?}");
}

/// A fake backend that answers the one query named `trigger` with a set of
/// forgeries first, then the genuine reply (and a copy of it).
fn forger(
    lab: &Lab,
    backend: &str,
    trigger: &'static [u8],
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let fake = lab.in_ns(false, || Ok(std::net::UdpSocket::bind(backend)?))?;
    // Another source address of the backend's own machine.
    let other = lab.in_ns(false, || Ok(std::net::UdpSocket::bind((CLIENT_V4, 5353))?))?;
    fake.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(std::thread::spawn(move || -> anyhow::Result<()> {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = fake.recv_from(&mut buf)?;
            let q = &buf[..n];
            if !q.windows(trigger.len()).any(|w| w == trigger) {
                continue;
            }
            let mut good = q.to_vec();
            good[2] |= 0x80;
            good[3] = 3; // NXDOMAIN: the genuine reply
            let mut forged = good.clone();
            forged[3] = 2; // SERVFAIL: any forgery that got through
            let good_ = good.clone();
            let good = forged;
            let mut wrong_id = good.clone();
            wrong_id[0] ^= 0x5a;
            let mut wrong_q = good.clone();
            let at = 13; // the first letter of the question name
            wrong_q[at] ^= 0x01;
            // The right ID to another port of the forwarding range.
            let mut wrong_port = from;
            wrong_port.set_port(if from.port() == 30000 {
                30001
            } else {
                from.port() - 1
            });
            fake.send_to(&good, wrong_port)?;
            fake.send_to(&wrong_id, from)?;
            fake.send_to(&wrong_q, from)?;
            fake.send_to(&good[..5], from)?;
            other.send_to(&good, from)?;
            std::thread::sleep(Duration::from_millis(100));
            fake.send_to(&good_, from)?;
            fake.send_to(&good_, from)?; // a duplicate
            return Ok(());
        }
    }))
}

#[test]
#[ignore = "needs root: run by make test"]
fn forged_replies_are_counted_and_never_answered_and_the_genuine_one_is() -> anyhow::Result<()> {
    let lab = Lab::new("forged")?;
    lab.client_addr("192.0.2.13/24", CLIENT_IF)?;
    let cfg = lab.config(
        "x",
        "[[backend]]\naddress = \"192.0.2.13:53\"\n[backend.health]\ninterval_ms = 600000\n\
         [forwarding]\ntimeout_ms = 3000\n",
    );
    let server = lab.start("x", &cfg)?;
    server.wait_status("backend resolved", |s| s["backends"][0]["mac"].is_string())?;
    let responder = forger(&lab, "192.0.2.13:53", b"\x06forged")?;
    let got = ask_raw(&lab, "forged.example.test")?;
    responder.join().expect("responder")?;
    only_the_genuine_answer(&got);
    let s = server.wait_status("forgeries counted", |s| {
        let f = &s["totals"]["forward"];
        f["stray_replies"].as_u64().unwrap_or(0) >= 2
            && f["bad_replies"].as_u64().unwrap_or(0) >= 2
            && f["duplicate_replies"].as_u64().unwrap_or(0) >= 1
            && s["xdp"]["not_backend"].as_u64().unwrap_or(0) >= 1
    })?;
    assert_eq!(s["backends"][0]["replies"], 1, "{s:#}");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn forged_replies_to_a_socket_backend_query_are_not_answered_either() -> anyhow::Result<()> {
    let lab = Lab::new("forgedsock")?;
    lab.client_addr("192.0.2.13/24", CLIENT_IF)?;
    let cfg = lab.config(
        "y",
        "[[backend]]\naddress = \"192.0.2.13:53\"\nxsk = false\n[backend.health]\ninterval_ms = 600000\n\
         [forwarding]\ntimeout_ms = 3000\nbackend_sockets = 8\n",
    );
    let server = lab.start("y", &cfg)?;
    server.wait_status("backend resolved", |s| s["backends"][0]["up"] == true)?;
    let responder = forger(&lab, "192.0.2.13:53", b"\x06forged")?;
    let got = ask_raw(&lab, "forged.example.test")?;
    responder.join().expect("responder")?;
    only_the_genuine_answer(&got);
    let s = server.wait_status("forgeries counted", |s| {
        let f = &s["totals"]["forward"];
        // Wrong port: the kernel drops it (no socket there), or it is
        // another pool socket's and matches no entry. From another address
        // to the right port: the steering program drops it, as a connected
        // socket would.
        f["stray_replies"].as_u64().unwrap_or(0) >= 1
            && f["bad_replies"].as_u64().unwrap_or(0) >= 2
            && f["duplicate_replies"].as_u64().unwrap_or(0) >= 1
            && s["steering"]["not_peer"].as_u64().unwrap_or(0) >= 1
    })?;
    assert_eq!(s["backends"][0]["replies"], 1, "{s:#}");
    // All that got to the dataplane came through its receiving socket.
    assert!(
        f_u64(&s, "steered_replies") >= 5,
        "the genuine reply, its copy and three forgeries from the backend to its port: {s:#}"
    );
    Ok(())
}
