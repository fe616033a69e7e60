//! The privilege boundary. Between fork and exec, the child becomes its
//! worker's user with the capabilities its kind keeps (a dataplane
//! CAP_NET_RAW, and CAP_IPC_LOCK if configured; TCP workers and the metrics
//! exporter none), no-new-privs and a parent-death signal, then execs the
//! worker from a descriptor the loader opened. Nothing that runs after this
//! is privileged.
//!
//! The child step runs between fork() and exec() of a multi-threaded parent,
//! so it only makes async-signal-safe system calls on data prepared in
//! advance: no allocation, no locks, no logging.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use caps::Capability;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;
use xdpdns_common::ipc::CONTROL_FD;

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// `CLOSE_RANGE_CLOEXEC`.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// Descriptors the loader prepares for the child are moved above this.
const HIGH_FD: libc::c_int = 10;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Who a worker runs as and what it keeps.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub keep: Vec<Capability>,
}

impl Identity {
    fn mask(&self) -> u64 {
        self.keep.iter().fold(0, |m, c| m | (1u64 << c.index()))
    }
}

/// The executable and its argument and environment vectors, prepared before
/// fork so the child only reads them.
pub struct ExecImage {
    binary: OwnedFd,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the CStrings owned by the same value
// and are only read (in the forked child); nothing mutates them after
// construction.
unsafe impl Send for ExecImage {}
// SAFETY: as above: immutable after construction.
unsafe impl Sync for ExecImage {}

impl ExecImage {
    /// Opens `binary` now (as the loader), so the child can exec it even if the
    /// dataplane user cannot traverse the path to it.
    pub fn new(binary: &Path, argv: &[&str], env: &[(String, String)]) -> io::Result<ExecImage> {
        let fd = open(binary, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
        let binary = dup_high(fd)?;
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(*a).map_err(io::Error::other))
            .collect::<io::Result<_>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")).map_err(io::Error::other))
            .collect::<io::Result<_>>()?;
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Ok(ExecImage {
            argv_ptrs: ptrs(&argv),
            envp_ptrs: ptrs(&envp),
            binary,
            _argv: argv,
            _envp: envp,
        })
    }
}

/// Moves a descriptor to >= HIGH_FD (close-on-exec), clear of fd 3.
pub fn dup_high(fd: OwnedFd) -> io::Result<OwnedFd> {
    let high = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(HIGH_FD))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) })
}

/// Everything the child step needs, prepared by the parent.
pub struct ChildSetup<'a> {
    pub identity: &'a Identity,
    pub image: &'a ExecImage,
    /// The child's end of the control socketpair (>= HIGH_FD).
    pub control: &'a OwnedFd,
    /// The CPU mask to run on (`dataplane.cpus`), if pinned.
    pub cpus: Option<&'a libc::cpu_set_t>,
    /// Resource limits to set (soft = hard), lowered only.
    pub limits: &'a [(libc::__rlimit_resource_t, u64)],
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn prctl(op: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) })
}

/// Runs in the forked child; returns only on failure (the child then exits
/// with the errno as its status). Async-signal-safe: system calls on
/// prepared data.
pub fn become_worker(s: &ChildSetup<'_>) -> io::Error {
    match transform(s) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn transform(s: &ChildSetup<'_>) -> io::Result<std::convert::Infallible> {
    let keep = s.identity.mask();

    if let Some(set) = s.cpus {
        // SAFETY: sched_setaffinity reads one cpu_set_t prepared before fork.
        check(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) })?;
    }

    // The control socket goes to fd 3; everything else closes on exec.
    // SAFETY: dup2 of a descriptor we own onto fd 3 (clearing its CLOEXEC).
    check(unsafe { libc::dup2(s.control.as_raw_fd(), CONTROL_FD) })?;
    // SAFETY: marks descriptors >= 4 close-on-exec; no memory is touched.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            4 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
        return Err(io::Error::last_os_error());
    }

    // Resource limits: what the worker needs and no more. (RLIMIT_NPROC is
    // the worker's own business after exec: set before setuid it would
    // make the exec fail.)
    for (resource, value) in s.limits {
        let lim = libc::rlimit {
            rlim_cur: *value,
            rlim_max: *value,
        };
        // SAFETY: setrlimit reads one rlimit from a live local.
        check(unsafe { libc::setrlimit(*resource, &lim) })?;
    }

    // Bounding set: only what is kept can ever be regained (needs CAP_SETPCAP).
    for cap in 0..64u64 {
        if keep & (1 << cap) == 0
            && let Err(e) = prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0)
            && e.raw_os_error() != Some(libc::EINVAL)
        {
            return Err(e);
        }
    }

    // Identity; KEEPCAPS carries the permitted set through setuid.
    prctl(libc::PR_SET_KEEPCAPS, 1, 0)?;
    let gid = s.identity.gid;
    // SAFETY: one gid read from a live local.
    check(unsafe { libc::setgroups(1, &gid) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    let uid = s.identity.uid;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;

    // Effective = permitted = inheritable = keep; ambient carries it over exec.
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let lo = keep as u32;
    let hi = (keep >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    // SAFETY: capset reads one header and two data structs, both live locals.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    for cap in 0..64u64 {
        if keep & (1 << cap) != 0 {
            // PR_CAP_AMBIENT takes (PR_CAP_AMBIENT_RAISE, cap) as arguments 2 and 3.
            // SAFETY: integer arguments only.
            check(unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            })?;
        }
    }

    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)?;
    // Set after the uid change, which clears it. SIGKILL: a worker must
    // never outlive its loader. (In its own PID namespace the worker cannot
    // see its parent to check it is still there; a loader that died before
    // this line leaves the worker's control socket closed, and the worker
    // exits at its first read.)
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0)?;

    // SAFETY: argv/envp are NULL-terminated arrays of pointers to live
    // NUL-terminated strings owned by `image`; the path is an empty C string
    // with AT_EMPTY_PATH, so the kernel execs the opened binary.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            s.image.binary.as_raw_fd(),
            c"".as_ptr(),
            s.image.argv_ptrs.as_ptr(),
            s.image.envp_ptrs.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(io::Error::last_os_error())
}
