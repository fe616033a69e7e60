//! The worker's end of a loader socketpair, message-agnostic: the
//! inherited descriptor, and one SOCK_SEQPACKET packet in or out with its
//! SCM_RIGHTS descriptors. The dataplane's [`super::Control`] and the other
//! workers' async channels are built on these.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockType, sockopt};
use xdpdns_common::ipc::{CONTROL_FD, MAX_FDS, MAX_MESSAGE_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(
        "no control socket at fd {CONTROL_FD}: xdpdns workers are started by the xdpdns loader, not by hand"
    )]
    Missing,
    #[error("control channel: {0}")]
    Sys(#[from] Errno),
    #[error("the loader sent a truncated message")]
    Truncated,
}

/// Takes ownership of the inherited control socket (fd 3), which must be a
/// SOCK_SEQPACKET socket, and marks it close-on-exec.
pub fn inherited() -> Result<OwnedFd, WireError> {
    // SAFETY: F_GETFD only inspects the descriptor table entry.
    if unsafe { libc::fcntl(CONTROL_FD, libc::F_GETFD) } < 0 {
        return Err(WireError::Missing);
    }
    // SAFETY: fd 3 is open (checked above) and, by the loader's contract,
    // the control socket handed to this process alone; nothing else in
    // this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    match socket::getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::SeqPacket) => {}
        _ => return Err(WireError::Missing),
    }
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(fd)
}

/// One packet and the descriptors beside it; `Ok(None)` when the loader
/// closed its end. `buf` must hold [`MAX_MESSAGE_BYTES`].
pub fn receive(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> Result<Option<(usize, Vec<OwnedFd>)>, WireError> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds, truncated) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed these descriptors
                    // in our table for us; nothing else owns them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, fds, truncated)
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(WireError::Truncated);
    }
    Ok(Some((len, fds)))
}

/// Sends one packet with up to one descriptor beside it.
pub fn send(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    with: Option<BorrowedFd<'_>>,
    flags: MsgFlags,
) -> Result<(), WireError> {
    let iov = [IoSlice::new(bytes)];
    let raw;
    let cmsgs: &[ControlMessage] = match with {
        Some(f) => {
            raw = [f.as_raw_fd()];
            &[ControlMessage::ScmRights(&raw)]
        }
        None => &[],
    };
    socket::sendmsg::<()>(
        fd.as_raw_fd(),
        &iov,
        cmsgs,
        flags | MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// A receive buffer of the largest message.
pub fn buffer() -> Vec<u8> {
    vec![0u8; MAX_MESSAGE_BYTES]
}
