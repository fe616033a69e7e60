//! The loader's end of a worker's control socketpair (SOCK_SEQPACKET):
//! messages encoded by `xdpdns_common::ipc`, descriptors as SCM_RIGHTS, and
//! the sender's credentials as SCM_CREDENTIALS (SO_PASSCRED), which is how a
//! received AF_XDP socket is known to come from our own child.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixCredentials, sockopt,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use xdpdns_common::ipc::{self, FromDataplane, IpcError, MAX_FDS, MAX_MESSAGE_BYTES};

use super::privdrop::dup_high;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("control socket: {0}")]
    Sys(#[from] nix::Error),
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Ipc(#[from] IpcError),
    #[error("dataplane sent a truncated message")]
    Truncated,
}

/// A sealed memfd holding `bytes`, its offset at 0 (the receiver reads it
/// from the start through the same open file).
fn blob(bytes: &[u8]) -> Result<OwnedFd, ChannelError> {
    use nix::fcntl::{FcntlArg, SealFlag};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::io::{Seek, Write};
    let fd = memfd_create(
        c"xdpdns-message",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    file.rewind()?;
    let fd = OwnedFd::from(file);
    nix::fcntl::fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// A message from a worker with what came beside it.
pub struct Incoming<T = FromDataplane> {
    pub msg: T,
    pub fds: Vec<OwnedFd>,
    /// Sender's (pid, uid, gid), as the kernel vouches for them.
    pub creds: Option<(i32, u32, u32)>,
}

pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// A connected pair: our non-blocking end, and the child's blocking end
    /// (moved above fd 10 so the child can dup2 it to fd 3 safely).
    pub fn pair() -> Result<(Channel, OwnedFd), ChannelError> {
        let (ours, theirs) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        socket::setsockopt(&ours, sockopt::PassCred, &true)?;
        let flags = nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_GETFL)?;
        nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFL(
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
            ),
        )?;
        // SAFETY: `ours` is an open socket owned by the AsyncFd for its whole
        // life; OwnedFd always reports the same descriptor.
        let fd = unsafe { AsyncFd::register(ours) }.map_err(|e| ChannelError::Io(e.into()))?;
        Ok((Channel { fd }, dup_high(theirs)?))
    }

    /// Sends `msg` with any number of descriptors: the first [`MAX_FDS`]
    /// beside it, the rest in `MoreFds` messages right after (the message
    /// announces how many there are).
    pub async fn send(
        &self,
        msg: &xdpdns_common::ipc::ToDataplane,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        self.send_with(msg, &xdpdns_common::ipc::ToDataplane::MoreFds, fds)
            .await
    }

    /// Sends `msg` with any number of descriptors: the first [`MAX_FDS`]
    /// beside it, the rest beside copies of `more` (the kind's `MoreFds`).
    /// A message larger than one packet goes as a sealed memfd (see
    /// [`ipc::MAX_BLOB_BYTES`]), before the descriptors.
    pub async fn send_with<T: Serialize>(
        &self,
        msg: &T,
        more: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        let bytes = ipc::encode_large(msg)?;
        let rest = if bytes.len() <= MAX_MESSAGE_BYTES {
            let first = fds.len().min(MAX_FDS);
            self.send_bytes(&bytes, &fds[..first]).await?;
            &fds[first..]
        } else {
            let blob = blob(&bytes)?;
            let first = fds.len().min(MAX_FDS - 1);
            let mut with = vec![blob.as_fd()];
            with.extend_from_slice(&fds[..first]);
            self.send_bytes(&ipc::blob_header(bytes.len()), &with)
                .await?;
            &fds[first..]
        };
        for extra in rest.chunks(MAX_FDS) {
            self.send_bytes(&ipc::encode(more)?, extra).await?;
        }
        Ok(())
    }

    async fn send_bytes(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                let iov = [IoSlice::new(bytes)];
                let cmsg = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
                socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            })
            .await?;
        Ok(())
    }

    /// The next message from a dataplane, or `None` when it closed its end.
    pub async fn recv(&self) -> Result<Option<Incoming>, ChannelError> {
        self.recv_as().await
    }

    /// The next message of type `T`, or `None` when the worker closed its end.
    pub async fn recv_as<T: DeserializeOwned>(&self) -> Result<Option<Incoming<T>>, ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
        let (len, fds, creds, truncated) = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; MAX_FDS]);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = socket::recvmsg::<()>(
                    fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                let mut creds = None;
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    match c {
                        ControlMessageOwned::ScmRights(raw) => {
                            for fd in raw {
                                // SAFETY: the kernel just installed this
                                // descriptor in our table; nothing else owns it.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                        ControlMessageOwned::ScmCredentials(c) => {
                            creds = Some((c.pid(), c.uid(), c.gid()))
                        }
                        _ => {}
                    }
                }
                let truncated = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                Ok((msg.bytes, fds, creds, truncated))
            })
            .await?;
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        if truncated {
            return Err(ChannelError::Truncated);
        }
        Ok(Some(Incoming {
            msg: ipc::decode(&buf[..len])?,
            fds,
            creds,
        }))
    }
}
