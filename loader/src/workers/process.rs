//! A worker process: created with clone3 into a PID namespace of its own
//! (it is PID 1 there and sees no other process: no sibling to signal),
//! held by a pidfd (no PID reuse race), killed and reaped through it.
//! Waiting is bounded by the caller: a child that cannot be killed is
//! reported, never waited for forever.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Exit statuses from this base up say the child could not become the
/// worker: the status minus the base is the errno of the step that failed.
pub const SETUP_FAILED_BASE: i32 = 100;

/// `struct clone_args` (linux/sched.h), up to `cgroup`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// A running (or exited, not yet reaped) worker.
pub struct WorkerProcess {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

/// Forks a child into a new PID namespace and runs `child` in it, which
/// must exec or return the error to exit with. In the child only
/// async-signal-safe work may happen (the parent may have other threads):
/// `child` gets data prepared before the call.
///
/// # Safety
/// `child` must be async-signal-safe: no allocation, no locks.
pub unsafe fn spawn(child: impl FnOnce() -> io::Error) -> io::Result<WorkerProcess> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: (libc::CLONE_NEWPID | libc::CLONE_PIDFD) as u64,
        pidfd: (&mut pidfd as *mut libc::c_int) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a valid clone_args of the size passed; without
    // CLONE_VM the child gets a copy of our memory, like fork.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let e = child();
        let code = SETUP_FAILED_BASE + e.raw_os_error().unwrap_or(0).clamp(0, 155);
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or destructors on its copy of memory.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: the kernel wrote a new descriptor for the child's pidfd;
    // nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: `fd` is the pidfd, owned by the AsyncFd for its whole life;
    // OwnedFd always reports the same descriptor.
    let pidfd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(io::Error::from)?;
    Ok(WorkerProcess {
        pid: pid as u32,
        pidfd,
        status: None,
    })
}

impl WorkerProcess {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Sends `signal`. EPERM (the loader lacks CAP_KILL for the worker's
    /// user) and ESRCH (gone already) come back as errors.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: pidfd_send_signal on our own pidfd, no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn start_kill(&self) -> io::Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Reaps the child if it has exited.
    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our pidfd writes one siginfo_t into `info`.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: after a successful waitid the pid field says whether a
        // child was reaped (0: not yet); status is then valid.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            _ => status & 0x7f,
        };
        let s = ExitStatus::from_raw(raw);
        self.status = Some(s);
        Ok(Some(s))
    }

    /// Waits for the child to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_reap()? {
                return Ok(s);
            }
            let mut guard = self.pidfd.readable().await?;
            guard.clear_ready();
        }
    }

    /// Kills the child and waits at most `bound` for it to go. False if it
    /// could not be killed or did not die in time.
    pub async fn kill_within(&mut self, bound: Duration) -> bool {
        if self.status.is_some() {
            return true;
        }
        let sent = self.start_kill();
        match tokio::time::timeout(bound, self.wait()).await {
            Ok(Ok(_)) => true,
            _ => {
                tracing::error!(
                    pid = self.pid,
                    signal_error = ?sent.err(),
                    "a worker could not be killed (does the loader hold CAP_KILL?); its queue stays on the kernel path"
                );
                false
            }
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.start_kill();
            // Reap it: a child just killed takes a moment to go. One that
            // cannot be killed stays (and was reported by `kill_within`).
            for _ in 0..50 {
                if matches!(self.try_reap(), Ok(Some(_)) | Err(_)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// What an exit status says, in words.
pub fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) if c >= SETUP_FAILED_BASE => format!(
                "could not start: {}",
                io::Error::from_raw_os_error(c - SETUP_FAILED_BASE)
            ),
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended".into(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn children_are_waited_for_and_killed_through_their_pidfd() {
        // PID namespaces need CAP_SYS_ADMIN: unprivileged runs skip.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for CLONE_NEWPID");
            return;
        }
        rt().block_on(async {
            let pid_one = || {
                // SAFETY: getpid and _exit are async-signal-safe.
                let me = unsafe { libc::getpid() };
                // PID 1 in its own namespace.
                // SAFETY: as above.
                unsafe { libc::_exit(if me == 1 { 7 } else { 9 }) };
            };
            // SAFETY: the child only calls getpid and _exit.
            let mut p = unsafe { spawn(pid_one) }.unwrap();
            let s = p.wait().await;
            assert_eq!(
                describe(&s),
                "exited with status 7",
                "PID 1 of its namespace"
            );
            let sleeper = || {
                // SAFETY: pause is async-signal-safe.
                unsafe { libc::pause() };
                io::Error::from_raw_os_error(0)
            };
            // SAFETY: the child only sleeps.
            let mut q = unsafe { spawn(sleeper) }.unwrap();
            assert!(q.kill_within(Duration::from_secs(5)).await);
            assert_eq!(describe(&q.wait().await), "killed by signal 9");
            // SAFETY: the child returns an error at once.
            let mut r = unsafe { spawn(|| io::Error::from_raw_os_error(libc::EACCES)) }.unwrap();
            let d = describe(&r.wait().await);
            assert!(
                d.starts_with("could not start") && d.contains("ermission denied"),
                "{d}"
            );
        });
    }
}
