//! The seccomp filters of the TCP worker and of the metrics exporter,
//! installed once they are set up. Anything not listed kills the process
//! (SIGSYS); the loader restarts it like any crash. Arguments are checked
//! where they matter: sockets only of the kinds the worker makes, no
//! executable or locked memory, fcntl without signal delivery, ioctl only to
//! set non-blocking mode, signals only to this process.

use seccompiler::{
    BpfProgram, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompRule,
};
use xdpdns_dataplane::sandbox::{SandboxError, compile};

/// What both workers' tokio runtimes need after setup.
const RUNTIME: &[(&str, libc::c_long)] = &[
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendto", libc::SYS_sendto),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("accept4", libc::SYS_accept4),
    ("shutdown", libc::SYS_shutdown),
    ("close", libc::SYS_close),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockopt", libc::SYS_getsockopt),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("brk", libc::SYS_brk),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("madvise", libc::SYS_madvise),
    ("futex", libc::SYS_futex),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("sched_yield", libc::SYS_sched_yield),
    ("getrandom", libc::SYS_getrandom),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
];

/// The TCP worker adds connecting to backends.
const TCP_ONLY: &[(&str, libc::c_long)] =
    &[("connect", libc::SYS_connect), ("bind", libc::SYS_bind)];

/// The exporter reads each snapshot's memfd.
const METRICS_ONLY: &[(&str, libc::c_long)] = &[("pread64", libc::SYS_pread64)];

fn rule(conditions: Vec<Cond>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(SandboxError::Filter)
}

fn cond(arg: u8, op: Op, value: u64) -> Result<Cond, SandboxError> {
    Cond::new(arg, Len::Dword, op, value).map_err(SandboxError::Filter)
}

/// The dataplane's argument-checked calls (memory never executable or
/// locked, fcntl without signal delivery, tgkill to ourselves), plus ioctl
/// FIONBIO only (std's set_nonblocking on a new listener) and, for the TCP
/// worker, sockets of the kinds it makes.
fn conditional(sockets: bool) -> Result<Vec<(libc::c_long, Vec<SeccompRule>)>, SandboxError> {
    let mut out = xdpdns_dataplane::sandbox::common()?;
    out.push((
        libc::SYS_ioctl,
        vec![rule(vec![cond(1, Op::Eq, libc::FIONBIO)?])?],
    ));
    if sockets {
        // TCP sockets toward backends, IPv4 or IPv6, nothing else.
        let stream = |family: i32| -> Result<SeccompRule, SandboxError> {
            rule(vec![
                cond(0, Op::Eq, family as u64)?,
                cond(1, Op::MaskedEq(0xff), libc::SOCK_STREAM as u64)?,
            ])
        };
        out.push((
            libc::SYS_socket,
            vec![stream(libc::AF_INET)?, stream(libc::AF_INET6)?],
        ));
    }
    Ok(out)
}

/// The TCP worker's filter.
pub fn tcp_filter() -> Result<BpfProgram, SandboxError> {
    let allowed: Vec<_> = RUNTIME.iter().chain(TCP_ONLY).copied().collect();
    compile(&allowed, conditional(true)?)
}

/// The metrics exporter's filter: no outgoing connections, no new sockets.
pub fn metrics_filter() -> Result<BpfProgram, SandboxError> {
    let allowed: Vec<_> = RUNTIME.iter().chain(METRICS_ONLY).copied().collect();
    compile(&allowed, conditional(false)?)
}

/// Test builds only: SIGUSR2 makes the worker call execve(2), which the
/// filter forbids, to prove a forbidden call kills it.
#[cfg(feature = "test-hooks")]
pub fn arm_forbidden_call_on_sigusr2() -> std::io::Result<()> {
    extern "C" fn forbidden(_: libc::c_int) {
        // SAFETY: one raw system call, which is async-signal-safe; the
        // filter kills the process on it.
        unsafe { libc::syscall(libc::SYS_execve, std::ptr::null::<u8>(), 0, 0) };
    }
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn
    // that lives as long as the program.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = forbidden as extern "C" fn(libc::c_int) as usize;
        if libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile_and_leave_out_what_they_must() {
        assert!(!tcp_filter().unwrap().is_empty());
        assert!(!metrics_filter().unwrap().is_empty());
        let all: Vec<_> = RUNTIME
            .iter()
            .chain(TCP_ONLY)
            .chain(METRICS_ONLY)
            .map(|(_, n)| *n)
            .collect();
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_bpf,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_setuid,
            libc::SYS_mount,
        ] {
            assert!(!all.contains(&forbidden), "{forbidden} must not be allowed");
        }
        assert!(
            !RUNTIME
                .iter()
                .chain(METRICS_ONLY)
                .any(|(_, n)| *n == libc::SYS_connect),
            "the exporter connects nowhere"
        );
    }
}
