//! A worker's end of its loader socketpair, async: typed messages over the
//! dataplane's [`wire`] (one SOCK_SEQPACKET packet each, descriptors as
//! SCM_RIGHTS). What the loader sends is decoded strictly; a worker that
//! cannot understand its loader exits.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use xdpdns_common::ipc::{self, IpcError, MAX_DESCRIPTORS};
use xdpdns_dataplane::control::wire::{self, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Ipc(#[from] IpcError),
    #[error("control channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("the loader closed the control channel")]
    Closed,
    #[error("unexpected message from the loader: {0}")]
    Unexpected(&'static str),
}

pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// The inherited control socket (fd 3), registered with the runtime.
    pub fn from_inherited() -> Result<Channel, ChannelError> {
        let fd = wire::inherited()?;
        let flags =
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(WireError::Sys)?;
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(
                nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK,
            ),
        )
        .map_err(WireError::Sys)?;
        // SAFETY: `fd` is an open socket owned by the AsyncFd for its whole
        // life; OwnedFd always reports the same descriptor.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| ChannelError::Io(e.into()))?;
        Ok(Channel { fd })
    }

    /// The next message and its descriptors.
    pub async fn recv<T: DeserializeOwned>(&self) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let mut buf = wire::buffer();
        let got = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                wire::receive(fd.as_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).map_err(|e| match e {
                    WireError::Sys(Errno::EAGAIN) => {
                        std::io::Error::from(std::io::ErrorKind::WouldBlock)
                    }
                    other => std::io::Error::other(other),
                })
            })
            .await?;
        match got {
            None => Err(ChannelError::Closed),
            Some((len, mut fds)) => {
                let msg = wire::message(&buf[..len], &mut fds)?;
                Ok((ipc::decode_large(&msg)?, fds))
            }
        }
    }

    /// The descriptors of a message announcing `want`: `fds` came with it,
    /// the rest follow in messages `more` recognises (`MoreFds`).
    pub async fn rest_of<T: DeserializeOwned>(
        &self,
        mut fds: Vec<OwnedFd>,
        want: u32,
        more: impl Fn(&T) -> bool,
    ) -> Result<Vec<OwnedFd>, ChannelError> {
        if want > MAX_DESCRIPTORS {
            return Err(ChannelError::Unexpected("too many descriptors announced"));
        }
        while fds.len() < want as usize {
            let (msg, extra) = self.recv::<T>().await?;
            if !more(&msg) || extra.is_empty() {
                return Err(ChannelError::Unexpected("descriptors missing"));
            }
            fds.extend(extra);
        }
        if fds.len() != want as usize {
            return Err(ChannelError::Unexpected("more descriptors than announced"));
        }
        Ok(fds)
    }

    /// Sends without waiting: a full socket drops this message (counters
    /// are sent again soon); a closed one is [`ChannelError::Closed`].
    pub fn try_send<T: Serialize>(
        &self,
        msg: &T,
        with: Option<BorrowedFd<'_>>,
    ) -> Result<(), ChannelError> {
        let bytes = ipc::encode(msg)?;
        match wire::send(
            self.fd.get_ref().as_fd(),
            &bytes,
            with,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(()) => Ok(()),
            Err(WireError::Sys(Errno::EAGAIN)) => Ok(()),
            Err(WireError::Sys(Errno::EPIPE | Errno::ECONNRESET)) => Err(ChannelError::Closed),
            Err(e) => Err(e.into()),
        }
    }
}
