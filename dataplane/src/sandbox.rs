//! The dataplane's seccomp filter: once its socket is set up and handed over,
//! a dataplane may only make the system calls its loop needs. Anything else
//! kills the process (SIGSYS), and the loader restarts it like any crash.
//!
//! The list was taken from strace of dataplanes under AF_XDP and kernel-path
//! load, through a reload and a shutdown, plus what rarer paths need: the
//! allocator growing, signal delivery, vDSO fallbacks and abort on panic.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("seccomp: unsupported architecture {0}")]
    Arch(&'static str),
    #[error("seccomp: {0}")]
    Filter(#[from] seccompiler::BackendError),
    #[error("seccomp: {0}")]
    Install(#[from] seccompiler::Error),
}

/// Every system call the dataplane may make after setup.
pub const ALLOWED: &[(&str, libc::c_long)] = &[
    // The loop: rings are memory; sockets and waiting are system calls.
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    // Reconfigure: the new sockets join the epoll set.
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
    ("recvmmsg", libc::SYS_recvmmsg),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("getsockopt", libc::SYS_getsockopt),
    // Reconfigure: the local port of each new backend socket.
    ("getsockname", libc::SYS_getsockname),
    // The control socket: counters out, Reconfigure/Shutdown in.
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
    // A Reconfigure larger than a packet (rules with a large qname_file)
    // arrives in a memfd beside its header (`ipc::MAX_BLOB_BYTES`).
    ("read", libc::SYS_read),
    // Reconfigure: old sockets closed (fcntl: see `guarded`).
    ("close", libc::SYS_close),
    // Logging to stderr.
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
    // The allocator (mmap and mprotect: see `guarded`).
    ("brk", libc::SYS_brk),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("madvise", libc::SYS_madvise),
    // Time (normally the vDSO), yielding while draining, futex on contention.
    ("clock_gettime", libc::SYS_clock_gettime),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("sched_yield", libc::SYS_sched_yield),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("futex", libc::SYS_futex),
    // Signals (SIGTERM sets a flag) and interrupted calls.
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("restart_syscall", libc::SYS_restart_syscall),
    // Exit, and abort() on a panic: SIGABRT, not SIGSYS, says what happened.
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
    ("rt_sigaction", libc::SYS_rt_sigaction),
];

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    Ok(SeccompRule::new(conditions)?)
}

fn arg(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    Ok(SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// The dataplane's calls allowed only with certain arguments: the
/// [`common`] ones, and `ppoll` with at most two descriptors and no signal
/// mask (the loop blocks on its epoll set and AF_XDP socket, see `poller`).
pub fn guarded() -> Result<Vec<(libc::c_long, Vec<SeccompRule>)>, SandboxError> {
    let mut calls = common()?;
    calls.push((
        libc::SYS_ppoll,
        vec![rule(vec![
            arg(1, SeccompCmpOp::Le, 2)?,
            SeccompCondition::new(3, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0)?,
        ])?],
    ));
    Ok(calls)
}

/// Calls every worker may make only with certain arguments (each rule
/// allows; none matching kills):
/// - `mmap` and `mprotect` never executable, `mmap` never MAP_LOCKED;
/// - `fcntl` only to read or set descriptor and status flags (never
///   O_ASYNC), and to duplicate close-on-exec: no F_SETOWN, F_SETSIG or
///   leases, the ways to have the kernel signal someone else;
/// - `tgkill` only to this process (abort on a panic). `kill` is not
///   allowed at all.
pub fn common() -> Result<Vec<(libc::c_long, Vec<SeccompRule>)>, SandboxError> {
    let no_exec = || arg(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0);
    let no_lock = || arg(3, SeccompCmpOp::MaskedEq(libc::MAP_LOCKED as u64), 0);
    let cmd = |c: libc::c_int| arg(1, SeccompCmpOp::Eq, c as u64);
    let own_pid = u64::from(std::process::id());
    Ok(vec![
        (libc::SYS_mmap, vec![rule(vec![no_exec()?, no_lock()?])?]),
        (libc::SYS_mprotect, vec![rule(vec![no_exec()?])?]),
        (
            libc::SYS_fcntl,
            vec![
                rule(vec![cmd(libc::F_GETFD)?])?,
                rule(vec![cmd(libc::F_SETFD)?])?,
                rule(vec![cmd(libc::F_GETFL)?])?,
                rule(vec![
                    cmd(libc::F_SETFL)?,
                    arg(2, SeccompCmpOp::MaskedEq(libc::O_ASYNC as u64), 0)?,
                ])?,
                rule(vec![cmd(libc::F_DUPFD_CLOEXEC)?])?,
            ],
        ),
        (
            libc::SYS_tgkill,
            vec![rule(vec![arg(0, SeccompCmpOp::Eq, own_pid)?])?],
        ),
    ])
}

fn arch() -> Result<TargetArch, SandboxError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| SandboxError::Arch(std::env::consts::ARCH))
}

/// The compiled filter: allow [`ALLOWED`] and the [`guarded`] calls with
/// their arguments; kill the process on anything else.
pub fn filter() -> Result<BpfProgram, SandboxError> {
    compile(ALLOWED, guarded()?)
}

/// A filter allowing `allowed` unconditionally and `conditional` calls
/// only when one of their rules (argument checks) matches; anything else
/// kills the process. Shared by every worker's own list.
pub fn compile(
    allowed: &[(&str, libc::c_long)],
    conditional: Vec<(libc::c_long, Vec<seccompiler::SeccompRule>)>,
) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        allowed.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    for (nr, r) in conditional {
        rules.insert(nr, r);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch()?,
    )?;
    Ok(filter.try_into()?)
}

/// Installs the filter on this (single-threaded) process. Needs no-new-privs,
/// which the loader sets before exec.
pub fn install() -> Result<(), SandboxError> {
    apply(&filter()?)
}

/// Installs `prog` on the calling thread, and with TSYNC on every other
/// thread of the process.
pub fn apply(prog: &BpfProgram) -> Result<(), SandboxError> {
    seccompiler::apply_filter_all_threads(prog)?;
    Ok(())
}

/// Test builds only: SIGUSR2 makes the dataplane call socket(2), which the
/// filter forbids, to prove a forbidden call kills it.
#[cfg(feature = "test-hooks")]
pub fn arm_forbidden_call_on_sigusr2() -> std::io::Result<()> {
    // SAFETY: the handler only makes one raw system call, which is
    // async-signal-safe.
    unsafe {
        signal_hook::low_level::register(signal_hook::consts::SIGUSR2, || {
            libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_DGRAM, 0);
        })
    }
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_lists_each_call_once() {
        assert!(!filter().unwrap().is_empty());
        let mut nrs: Vec<_> = ALLOWED.iter().map(|(_, n)| *n).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), ALLOWED.len());
        for forbidden in [
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_bpf,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_ptrace,
        ] {
            assert!(!nrs.contains(&forbidden), "{forbidden} must not be allowed");
        }
    }
}
