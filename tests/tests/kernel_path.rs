//! Everything that is not ours, and everything on a queue without a socket,
//! goes to the kernel stack.

use std::net::UdpSocket;
use std::time::Duration;

use xdpdns_netns_tests::*;

#[test]
#[ignore = "needs root: run by make test"]
fn other_destinations_reach_kernel_sockets() -> anyhow::Result<()> {
    let lab = Lab::new("otherdest")?;
    lab.server_addr("192.0.2.3/24", SERVER_IF)?;
    let server = lab.start("o", &lab.config("o", ""))?;
    let (other_port, other_addr) = lab.in_ns(true, || {
        let a = UdpSocket::bind(format!("{SERVER_V4}:5353"))?;
        let b = UdpSocket::bind("192.0.2.3:53")?;
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
        }
        Ok((a, b))
    })?;
    let before = xdp(&server.status()?, "other_dest");
    lab.kdig(&[&format!("@{SERVER_V4}"), "-p", "5353", "example.com"]);
    lab.kdig(&["@192.0.2.3", "example.com"]);
    let mut buf = [0u8; 512];
    let (n, from) = other_port.recv_from(&mut buf)?;
    assert!(
        n >= 12,
        "a DNS query reached the kernel socket on port 5353"
    );
    assert_eq!(from.ip().to_string(), CLIENT_V4);
    let (n, _) = other_addr.recv_from(&mut buf)?;
    assert!(
        n >= 12,
        "a DNS query reached the kernel socket on 192.0.2.3:53"
    );
    let s = server.status()?;
    assert!(xdp(&s, "other_dest") >= before + 2, "{s:#}");
    assert_eq!(total(&s, "xsk", "received"), 0, "neither went to AF_XDP");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_queue_without_a_socket_is_served_through_the_kernel_path() -> anyhow::Result<()> {
    let lab = Lab::new("nosock")?;
    // Only queue 0 gets a dataplane; the client sends on queue 1.
    let server = lab.start("n", &lab.config_full("n", "queues = [0]", "", ""))?;
    lab.steer_client_to_queue(1)?;
    for i in 0..10 {
        assert_eq!(
            lab.kdig(&[&format!("@{SERVER_V4}"), &format!("k{i}.example")]),
            "REFUSED"
        );
        assert_eq!(
            lab.kdig(&[&format!("@{SERVER_V6}"), &format!("k{i}.example")]),
            "REFUSED"
        );
    }
    let s = server.wait_status("20 kernel-path answers", |s| {
        total(s, "kernel", "answered") >= 20
    })?;
    assert!(
        xdp(&s, "no_socket") >= 20,
        "the program found queue 1's slot empty: {s:#}"
    );
    assert_eq!(total(&s, "xsk", "received"), 0, "{s:#}");
    Ok(())
}

#[test]
#[ignore = "needs root: run by make test"]
fn redirection_can_be_switched_off_and_on_live() -> anyhow::Result<()> {
    let lab = Lab::new("redirect")?;
    let server = lab.start("r", &lab.config_full("r", "redirect = false", "", ""))?;
    let v4 = format!("@{SERVER_V4}");
    for i in 0..5 {
        assert_eq!(lab.kdig(&[&v4, &format!("off{i}.example")]), "REFUSED");
    }
    let s = server.wait_status("kernel-path answers", |s| {
        total(s, "kernel", "answered") >= 5
    })?;
    assert_eq!(total(&s, "xsk", "received"), 0, "{s:#}");
    assert_eq!(s["redirect"], false);
    std::fs::write(&server.config, lab.config("r", ""))?;
    let out = server.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..5 {
        assert_eq!(lab.kdig(&[&v4, &format!("on{i}.example")]), "REFUSED");
    }
    server.wait_status("AF_XDP answers after switching on", |s| {
        total(s, "xsk", "answered") >= 5
    })?;
    Ok(())
}
