//! CPU affinity for dataplanes (`dataplane.cpus`): which CPUs this process
//! may use, and the mask a dataplane is pinned with.

use std::io;

fn current() -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain bits; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes
    // into the live local.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// The CPUs this process may run on (its affinity mask, which a cgroup
/// cpuset or systemd's `CPUAffinity=` narrows).
pub fn allowed() -> io::Result<Vec<u32>> {
    let set = current()?;
    Ok((0..libc::CPU_SETSIZE as u32)
        // SAFETY: CPU_ISSET reads one bit of the set; cpu < CPU_SETSIZE.
        .filter(|c| unsafe { libc::CPU_ISSET(*c as usize, &set) })
        .collect())
}

/// The configured CPUs that this process may not use, with the message.
pub fn check(cpus: &[u32]) -> Result<(), String> {
    if cpus.is_empty() {
        return Ok(());
    }
    let allowed = allowed()
        .map_err(|e| format!("dataplane.cpus: cannot read this process's CPU affinity: {e}"))?;
    let missing: Vec<String> = cpus
        .iter()
        .filter(|c| !allowed.contains(c))
        .map(u32::to_string)
        .collect();
    if missing.is_empty() {
        return settable();
    }
    Err(format!(
        "dataplane.cpus: CPU {} not available to xdpdns (it may use {}): fix the list, or the service's CPUAffinity=/cpuset",
        missing.join(", "),
        ranges(&allowed)
    ))
}

/// Whether sched_setaffinity is allowed here: sets this thread's own mask
/// again (a no-op), as a seccomp filter would refuse the dataplane's.
fn settable() -> Result<(), String> {
    let set = current()
        .map_err(|e| format!("dataplane.cpus: cannot read this process's CPU affinity: {e}"))?;
    // SAFETY: sched_setaffinity reads one live cpu_set_t.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(format!(
            "dataplane.cpus: setting CPU affinity is not permitted here ({e}); under the packaged \
             unit, whose SystemCallFilter denies @resources, add `SystemCallFilter=sched_setaffinity` \
             in a drop-in, or pin the whole service with CPUAffinity= instead"
        ));
    }
    Ok(())
}

/// The CPU queue `queue`'s dataplane is pinned to, if any.
pub fn for_queue(cpus: &[u32], queue: u32) -> Option<u32> {
    (!cpus.is_empty()).then(|| cpus[queue as usize % cpus.len()])
}

/// A mask holding `cpu` alone, prepared before fork.
pub fn mask(cpu: u32) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // CPU_SET on an index past CPU_SETSIZE would write out of bounds; the
    // configuration caps it (MAX_CPUS), and this re-checks.
    if (cpu as usize) < libc::CPU_SETSIZE as usize {
        // SAFETY: sets one bit inside the set (index checked above).
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    }
    set
}

/// "0-3, 6" for a sorted list.
fn ranges(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_wrap_around_the_list() {
        assert_eq!(for_queue(&[], 3), None);
        assert_eq!(for_queue(&[4, 5], 0), Some(4));
        assert_eq!(for_queue(&[4, 5], 3), Some(5));
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges(&[0, 1, 2, 3, 6, 8, 9]), "0-3, 6, 8-9");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn this_process_may_use_its_own_cpus_and_not_others() {
        let mine = allowed().unwrap();
        assert!(!mine.is_empty());
        assert!(check(&[mine[0]]).is_ok());
        let e = check(&[1023]).unwrap_err();
        assert!(e.contains("dataplane.cpus") && e.contains("1023"), "{e}");
    }

    #[test]
    fn a_mask_holds_one_cpu() {
        let m = mask(3);
        // SAFETY: reads bits of a live set.
        let set: Vec<usize> = (0..8)
            .filter(|c| unsafe { libc::CPU_ISSET(*c, &m) })
            .collect();
        assert_eq!(set, [3]);
    }
}
