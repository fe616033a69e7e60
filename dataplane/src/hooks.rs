//! Test builds only (`test-hooks`): misbehaviour on request, to prove the
//! sandbox and the loader's checks hold. `XDPDNS_TEST_HOOK` names one
//! (`NAME@Q`: for queue Q's dataplane only):
//! - `probe-kill`, `probe-setown`, `probe-exec`, `probe-mlock`: once
//!   sandboxed, make a call the filter forbids (signal someone, have the
//!   kernel signal someone, executable or locked memory); a dataplane that
//!   survives exits with status 77;
//! - `probe-tgkill`: signal a thread of another process;
//! - `probe-ppoll`: `ppoll` with a signal mask (the loop's own `ppoll`
//!   passes none, on two descriptors);
//! - `second-ready`, `big-vector`, `overflow`: lie to the loader;
//! - `scribble-from-Q`: the dataplane of queue Q, on every sweep, rewrites
//!   the in-flight entries of the other queues whose question has a label
//!   `scribble` (answers would go to broadcast, multicast, unspecified
//!   clients, from a port or address we do not listen on, to a multicast
//!   MAC), and plants expired entries like them in those queues' free slots.

use std::os::fd::{AsRawFd, BorrowedFd};

use xdpdns_common::ipc::{PROTOCOL_VERSION, XskReady};
use xdpdns_common::stats::DataplaneCounters;

use crate::control::Control;
use crate::shm::inflight::{Entry, Table};

/// The hook for `queue`: `NAME` applies to every queue, `NAME@Q` to queue
/// Q only (the other queues keep serving, the kernel path among them).
fn hook(queue: u32) -> Option<String> {
    let h = std::env::var("XDPDNS_TEST_HOOK").ok()?;
    match h.split_once('@') {
        Some((name, q)) => (q.parse() == Ok(queue)).then(|| name.to_string()),
        None => Some(h),
    }
}

/// The forbidden-call probes, run once the filter is installed.
pub fn probe_sandbox(queue: u32, control: BorrowedFd<'_>) {
    let Some(h) = hook(queue) else { return };
    // SAFETY: each is one raw system call the filter is meant to kill.
    unsafe {
        match h.as_str() {
            "probe-kill" => {
                libc::kill(2, libc::SIGSTOP);
            }
            "probe-tgkill" => {
                libc::syscall(libc::SYS_tgkill, 2, 2, libc::SIGSTOP);
            }
            "probe-setown" => {
                libc::fcntl(control.as_raw_fd(), libc::F_SETOWN, 2);
            }
            "probe-exec" => {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
            }
            "probe-ppoll" => {
                let mut fd = libc::pollfd {
                    fd: control.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                let mut mask: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut mask);
                libc::ppoll(&mut fd, 1, &ts, &mask);
            }
            "probe-mlock" => {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_LOCKED,
                    -1,
                    0,
                );
            }
            _ => return,
        }
        libc::_exit(77);
    }
}

/// The lies, told right after Ready.
pub fn lie(queue: u32, control: &Control, xsk: BorrowedFd<'_>) {
    let Some(h) = hook(queue) else { return };
    match h.as_str() {
        "second-ready" => {
            let _ = control.send_ready(
                XskReady {
                    protocol: PROTOCOL_VERSION,
                    zero_copy: false,
                    umem_bytes: 0,
                    ring_size: 0,
                },
                xsk,
            );
        }
        "big-vector" => {
            let mut c = DataplaneCounters::new();
            c.rule_hits = vec![1; 4000];
            let _ = control.send_stats(&c);
        }
        "overflow" => {
            let mut c = DataplaneCounters::new();
            c.xsk.received = u64::MAX;
            c.kernel.answered = u64::MAX;
            let _ = control.send_stats(&c);
            let _ = control.send_stats(&c);
        }
        _ => {}
    }
}

/// The hostile sibling (`scribble-from-Q`), run by queue Q's sweeps.
pub fn scribble(queue: u32, table: &Table) {
    let Some(h) = hook(queue) else { return };
    if h.strip_prefix("scribble-from-")
        .and_then(|q| q.parse().ok())
        != Some(queue)
    {
        return;
    }
    let marked = |e: &Entry| e.question().windows(9).any(|w| w == b"\x08scribble");
    for region in (0..table.regions()).filter(|r| *r != queue) {
        let mut template = None;
        table.scribble(region, |index, e| {
            // Already rewritten: its client port is the one we leave.
            if !marked(e) || e.client.id == 0xbad0 {
                return false;
            }
            e.client.id = 0xbad0;
            let c = &mut e.client;
            match index % 6 {
                0 => c.ip[..4].copy_from_slice(&[255, 255, 255, 255]),
                1 => c.ip[..4].copy_from_slice(&[224, 0, 0, 251]),
                2 => c.ip = [0; 16],
                3 => c.local_port = 5353,
                4 => c.local_ip[3] = c.local_ip[3].wrapping_add(77),
                _ => c.mac = [0x01, 0x00, 0x5e, 0, 0, 0xfb],
            }
            template = Some(*e);
            true
        });
        if let Some(mut t) = template {
            t.deadline_ms = 0;
            t.client.ip[..4].copy_from_slice(&[255, 255, 255, 255]);
            table.plant(region, &t, 16);
        }
    }
}
