//! The deployment files are checked, not just written: systemd units,
//! AppArmor profiles, and the Debian package installed and removed for real.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use xdpdns_netns_tests::*;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn systemd_units_verify_and_expose_at_most_2_5() -> anyhow::Result<()> {
    let dir = tempdir("units")?;
    for unit in ["xdpdns.service", "xdpdns@.service"] {
        let body = std::fs::read_to_string(repo_root().join("packaging/systemd").join(unit))?;
        // Point ExecStart at the built binary; everything else as shipped.
        let body = body.replace("/usr/sbin/xdpdns", bin("xdpdns").to_str().unwrap());
        std::fs::write(dir.join(unit), body)?;
    }
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("xdpdns.service"))
        .arg(dir.join("xdpdns@.service"))
        .output()?;
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        text(&verify)
    );
    for unit in ["xdpdns.service", "xdpdns@.service"] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(dir.join(unit))
            .output()?;
        let t = text(&out);
        let score: f64 = t
            .lines()
            .find_map(|l| l.split("exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no exposure score in:\n{t}"))?;
        eprintln!("{unit}: exposure {score}");
        assert!(score <= 2.5, "{unit} exposure {score}:\n{t}");
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[test]
fn apparmor_profiles_parse_and_the_dataplane_gets_net_raw_only() -> anyhow::Result<()> {
    let dir = repo_root().join("packaging/apparmor");
    for profile in ["usr.sbin.xdpdns", "usr.lib.xdpdns.xdpdns-dataplane"] {
        let out = Command::new("apparmor_parser")
            .args(["-Q", "-K", "-T"])
            .arg(dir.join(profile))
            .output()?;
        assert!(out.status.success(), "{profile}: {}", text(&out));
    }
    // Expanded with every include: the dataplane's only capability is net_raw.
    let out = Command::new("apparmor_parser")
        .arg("-p")
        .arg(dir.join("usr.lib.xdpdns.xdpdns-dataplane"))
        .output()?;
    assert!(out.status.success(), "{}", text(&out));
    let expanded = String::from_utf8_lossy(&out.stdout);
    let caps: Vec<&str> = expanded
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("capability"))
        .collect();
    assert_eq!(caps, ["capability net_raw,"]);
    assert!(expanded.contains("network xdp raw,"));
    // The loader hands dataplanes over to that profile.
    let loader = std::fs::read_to_string(dir.join("usr.sbin.xdpdns"))?;
    assert!(loader.contains("/usr/lib/xdpdns/xdpdns-dataplane Px -> xdpdns-dataplane,"));
    Ok(())
}

/// Purges the package on drop, so a failed test leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "xdpdns"]).output();
    }
}

#[test]
fn the_debian_package_installs_checks_and_removes_cleanly() -> anyhow::Result<()> {
    let root = repo_root();
    let out = Command::new(root.join("scripts/build-deb.sh"))
        .arg(bin_dir())
        .current_dir(&root)
        .output()?;
    assert!(out.status.success(), "{}", text(&out));
    let deb = root.join(String::from_utf8_lossy(&out.stdout).trim());
    let _guard = Installed;
    let out = Command::new("dpkg").arg("-i").arg(&deb).output()?;
    assert!(out.status.success(), "{}", text(&out));
    for f in [
        "/usr/sbin/xdpdns",
        "/usr/lib/xdpdns/xdpdns-dataplane",
        "/lib/systemd/system/xdpdns.service",
        "/lib/systemd/system/xdpdns@.service",
        "/usr/lib/sysusers.d/xdpdns.conf",
        "/usr/lib/tmpfiles.d/xdpdns.conf",
        "/etc/apparmor.d/usr.sbin.xdpdns",
        "/etc/apparmor.d/usr.lib.xdpdns.xdpdns-dataplane",
        "/etc/xdpdns/xdpdns.toml",
        "/usr/share/man/man8/xdpdns.8.gz",
    ] {
        assert!(Path::new(f).exists(), "{f} installed");
    }
    for user in ["xdpdns", "xdpdns-dp"] {
        assert!(
            Command::new("getent")
                .args(["passwd", user])
                .output()?
                .status
                .success(),
            "user {user}"
        );
    }
    let help = Command::new("/usr/sbin/xdpdns").arg("--help").output()?;
    for sub in ["run", "check", "status", "reload", "restart-queue"] {
        assert!(
            String::from_utf8_lossy(&help.stdout).contains(sub),
            "--help lists {sub}"
        );
    }

    // `check` of the shipped configuration, in a namespace with an eth0.
    let ns = format!("xdt-deb-{}", std::process::id());
    ip(&["netns", "add", &ns])?;
    let netns = scopeguard(&ns);
    ip(&[
        "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args([
            "/usr/sbin/xdpdns",
            "check",
            "--config",
            "/etc/xdpdns/xdpdns.toml",
        ])
        .env("NO_COLOR", "1")
        .output()?;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("/usr/lib/xdpdns/xdpdns-dataplane as xdpdns-dp"),
        "{t}"
    );
    drop(netns);

    let out = Command::new("dpkg").args(["--purge", "xdpdns"]).output()?;
    assert!(out.status.success(), "{}", text(&out));
    for f in [
        "/usr/sbin/xdpdns",
        "/usr/lib/xdpdns",
        "/lib/systemd/system/xdpdns.service",
        "/etc/xdpdns",
        "/etc/apparmor.d/usr.sbin.xdpdns",
    ] {
        assert!(!Path::new(f).exists(), "{f} removed");
    }
    Ok(())
}

fn tempdir(tag: &str) -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("xdt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Deletes a network namespace on drop.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn scopeguard(ns: &str) -> NsGuard {
    NsGuard(ns.into())
}
