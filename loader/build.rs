//! Compiles the XDP program (bpf/xdpdns.bpf.c) and the socket-reply
//! steering program (bpf/steer.bpf.c) with clang into OUT_DIR; the loader
//! embeds the objects, so `cargo build` needs no separate step.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest.join("../bpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for f in ["xdpdns.bpf.c", "xdpdns_abi.h", "steer.bpf.c"] {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=XDPDNS_BPF_CFLAGS");
    for name in ["xdpdns", "steer"] {
        compile(
            &bpf_dir,
            &bpf_dir.join(format!("{name}.bpf.c")),
            &out_dir.join(format!("{name}.bpf.o")),
        );
    }
}

fn compile(bpf_dir: &Path, src: &Path, out: &Path) {
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // linux/bpf.h includes asm/types.h, which Debian keeps under the multiarch directory.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let mut cmd = Command::new(&clang);
    // v3: atomic compare-and-swap (the shared rate-limit state).
    cmd.args([
        "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
    ])
    .arg(format!("-I{multiarch}"))
    .arg(format!("-I{}", bpf_dir.display()));
    if let Ok(extra) = env::var("XDPDNS_BPF_CFLAGS") {
        cmd.args(extra.split_whitespace());
    }
    cmd.arg("-c").arg(src).arg("-o").arg(out);
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => panic!(
            "cannot run {clang} to build the XDP program ({e}). Install clang, libbpf-dev and \
             linux-libc-dev (`make deps`), or point CLANG at a clang binary."
        ),
    };
    if !status.success() {
        panic!(
            "{clang} failed to compile {}. Headers come from libbpf-dev (bpf/bpf_helpers.h) and \
             linux-libc-dev ({multiarch}/asm/types.h): `make deps` installs both.",
            src.display()
        );
    }
}
