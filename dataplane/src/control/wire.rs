//! The worker's end of a loader socketpair, message-agnostic: the
//! inherited descriptor, and one SOCK_SEQPACKET packet in or out with its
//! SCM_RIGHTS descriptors. The dataplane's [`super::Control`] and the other
//! workers' async channels are built on these.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockType, sockopt};
use xdpdns_common::ipc::{CONTROL_FD, MAX_BLOB_BYTES, MAX_FDS, MAX_MESSAGE_BYTES};

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
    #[error("the loader sent a bad message blob: {0}")]
    Blob(&'static str),
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

/// The message of a received packet: the packet itself, or, for a blob
/// header, the memfd that came first beside it (taken from `fds`), read
/// whole with [`MAX_BLOB_BYTES`] as the bound. The loader seals the memfd;
/// it is trusted, so the bound is what protects us here.
pub fn message<'a>(
    packet: &'a [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<std::borrow::Cow<'a, [u8]>, WireError> {
    let Some(len) = xdpdns_common::ipc::blob_len(packet) else {
        return Ok(std::borrow::Cow::Borrowed(packet));
    };
    if fds.is_empty() {
        return Err(WireError::Blob("no memfd beside it"));
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_BLOB_BYTES && *l > MAX_MESSAGE_BYTES)
        .ok_or(WireError::Blob("announced size out of bounds"))?;
    let fd = fds.remove(0);
    let mut bytes = vec![0u8; len];
    let mut at = 0;
    while at < len {
        match nix::unistd::read(&fd, &mut bytes[at..]) {
            Ok(0) => return Err(WireError::Blob("shorter than announced")),
            Ok(n) => at += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(WireError::Sys(e)),
        }
    }
    let mut probe = [0u8; 1];
    if nix::unistd::read(&fd, &mut probe)? != 0 {
        return Err(WireError::Blob("longer than announced"));
    }
    Ok(std::borrow::Cow::Owned(bytes))
}

/// A receive buffer of the largest message.
pub fn buffer() -> Vec<u8> {
    vec![0u8; MAX_MESSAGE_BYTES]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use xdpdns_common::ipc::blob_header;

    fn memfd(bytes: &[u8]) -> OwnedFd {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f.into()
    }

    #[test]
    fn blobs_are_read_whole_and_bounded() {
        let big = vec![7u8; MAX_MESSAGE_BYTES + 10];
        let header = blob_header(big.len());
        let mut fds = vec![memfd(&big), memfd(b"other")];
        let msg = message(&header, &mut fds).unwrap();
        assert_eq!(&*msg, &big[..]);
        assert_eq!(fds.len(), 1, "the blob's memfd is taken, the others stay");
        // A plain packet is its own message.
        let mut none = Vec::new();
        assert_eq!(&*message(b"plain", &mut none).unwrap(), b"plain");
        // Bad blobs: no memfd, shorter, longer, sizes out of bounds.
        assert!(message(&header, &mut Vec::new()).is_err());
        let short = &big[..big.len() - 1];
        assert!(message(&header, &mut vec![memfd(short)]).is_err());
        let long = [&big[..], b"x"].concat();
        assert!(message(&header, &mut vec![memfd(&long)]).is_err());
        for len in [10, MAX_BLOB_BYTES + 1] {
            assert!(message(&blob_header(len), &mut vec![memfd(b"x")]).is_err());
        }
    }
}
