//! The dataplane's end of the control socketpair: receive the configuration
//! and kernel-path sockets, hand back the AF_XDP socket, report counters
//! (over [`wire`], which the other workers share).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, sockopt};
use xdpdns_common::ipc::{
    self, ClientCount, DataplaneInit, FromDataplane, IpcError, MAX_DESCRIPTORS, PROTOCOL_VERSION,
    SetupFailure, ToDataplane, XskReady,
};
use xdpdns_common::stats::DataplaneCounters;

pub mod wire;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Ipc(#[from] IpcError),
    #[error("the loader closed the control channel")]
    Closed,
    #[error(
        "protocol mismatch: loader speaks version {theirs}, this worker {PROTOCOL_VERSION}; install matching binaries"
    )]
    Version { theirs: u32 },
    #[error("unexpected message from the loader: {0}")]
    Unexpected(&'static str),
}

impl ControlError {
    /// The errno of a failed system call, if that is what this is.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ControlError::Wire(wire::WireError::Sys(e)) => Some(*e),
            _ => None,
        }
    }
}

pub struct Control {
    fd: OwnedFd,
}

impl Control {
    /// Takes ownership of the inherited control socket.
    pub fn from_inherited() -> Result<Control, ControlError> {
        Ok(Control {
            fd: wire::inherited()?,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Waits (up to `timeout`) for the loader's Init and its sockets.
    pub fn receive_init(
        &self,
        timeout: Duration,
    ) -> Result<(DataplaneInit, Vec<OwnedFd>), ControlError> {
        let tv =
            nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
        socket::setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv).map_err(wire::WireError::Sys)?;
        let (msg, fds) = self
            .receive(MsgFlags::empty())?
            .ok_or(ControlError::Closed)?;
        match msg {
            ToDataplane::Init(init) => {
                if init.protocol != PROTOCOL_VERSION {
                    return Err(ControlError::Version {
                        theirs: init.protocol,
                    });
                }
                let fds = self.rest_of(fds, init.descriptors)?;
                Ok((*init, fds))
            }
            ToDataplane::Shutdown => Err(ControlError::Closed),
            _ => Err(ControlError::Unexpected("a message before Init")),
        }
    }

    /// The descriptors of a message announcing `want`: `fds` came with it,
    /// the rest follow in MoreFds messages the loader sends right after.
    pub fn rest_of(&self, mut fds: Vec<OwnedFd>, want: u32) -> Result<Vec<OwnedFd>, ControlError> {
        if want > MAX_DESCRIPTORS {
            return Err(ControlError::Unexpected("too many descriptors announced"));
        }
        while fds.len() < want as usize {
            match self.receive(MsgFlags::empty())? {
                Some((ToDataplane::MoreFds, more)) if !more.is_empty() => fds.extend(more),
                Some(_) => return Err(ControlError::Unexpected("descriptors missing")),
                None => return Err(ControlError::Closed),
            }
        }
        if fds.len() != want as usize {
            return Err(ControlError::Unexpected("more descriptors than announced"));
        }
        Ok(fds)
    }

    /// A message (with its descriptors) if one is waiting; `Ok(None)` if none is.
    pub fn try_receive(&self) -> Result<Option<(ToDataplane, Vec<OwnedFd>)>, ControlError> {
        match self.receive(MsgFlags::MSG_DONTWAIT) {
            Ok(Some(received)) => Ok(Some(received)),
            Ok(None) => Err(ControlError::Closed),
            Err(e) if e.errno() == Some(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn receive(
        &self,
        flags: MsgFlags,
    ) -> Result<Option<(ToDataplane, Vec<OwnedFd>)>, ControlError> {
        let mut buf = wire::buffer();
        match wire::receive(self.fd.as_fd(), &mut buf, flags)? {
            None => Ok(None),
            Some((len, mut fds)) => {
                let msg = wire::message(&buf[..len], &mut fds)?;
                Ok(Some((ipc::decode_large(&msg)?, fds)))
            }
        }
    }

    fn send(
        &self,
        msg: &FromDataplane,
        fd: Option<BorrowedFd<'_>>,
        flags: MsgFlags,
    ) -> Result<(), ControlError> {
        let bytes = ipc::encode(msg)?;
        wire::send(self.fd.as_fd(), &bytes, fd, flags)?;
        Ok(())
    }

    /// Hands the bound AF_XDP socket to the loader.
    pub fn send_ready(&self, ready: XskReady, xsk: BorrowedFd<'_>) -> Result<(), ControlError> {
        self.send(&FromDataplane::Ready(ready), Some(xsk), MsgFlags::empty())
    }

    /// Reports counters without blocking; a full socket skips this report.
    /// The answers-per-client report (dropped, not queued, if the socket is full).
    pub fn send_clients(&self, counts: Vec<ClientCount>) -> Result<(), ControlError> {
        match self.send(
            &FromDataplane::Clients(counts),
            None,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Err(e) if e.errno() == Some(Errno::EAGAIN) => Ok(()),
            Err(e) if matches!(e.errno(), Some(Errno::EPIPE | Errno::ECONNRESET)) => {
                Err(ControlError::Closed)
            }
            other => other,
        }
    }

    pub fn send_stats(&self, counters: &DataplaneCounters) -> Result<(), ControlError> {
        match self.send(
            &FromDataplane::Stats(Box::new(counters.clone())),
            None,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Err(e) if e.errno() == Some(Errno::EAGAIN) => Ok(()),
            Err(e) if matches!(e.errno(), Some(Errno::EPIPE | Errno::ECONNRESET)) => {
                Err(ControlError::Closed)
            }
            other => other,
        }
    }

    /// Tells the loader why setup failed (best effort: we are exiting anyway).
    pub fn send_failure(&self, failure: SetupFailure) {
        let _ = self.send(
            &FromDataplane::Failed(failure),
            None,
            MsgFlags::MSG_DONTWAIT,
        );
    }
}
