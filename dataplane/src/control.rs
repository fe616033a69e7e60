//! The dataplane's end of the control socketpair: receive the configuration
//! and kernel-path sockets, hand back the AF_XDP socket, report counters.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockType, sockopt};
use xdpdns_common::ipc::{
    self, CONTROL_FD, DataplaneInit, FromDataplane, IpcError, MAX_DESCRIPTORS, MAX_FDS,
    MAX_MESSAGE_BYTES, PROTOCOL_VERSION, SetupFailure, ToDataplane, XskReady,
};
use xdpdns_common::stats::DataplaneCounters;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no control socket at fd {CONTROL_FD}: xdpdns-dataplane is started by the xdpdns loader, not by hand"
    )]
    Missing,
    #[error("control channel: {0}")]
    Sys(#[from] Errno),
    #[error(transparent)]
    Ipc(#[from] IpcError),
    #[error("the loader closed the control channel")]
    Closed,
    #[error(
        "protocol mismatch: loader speaks version {theirs}, this dataplane {PROTOCOL_VERSION}; install matching binaries"
    )]
    Version { theirs: u32 },
    #[error("unexpected message from the loader: {0}")]
    Unexpected(&'static str),
}

pub struct Control {
    fd: OwnedFd,
}

impl Control {
    /// Takes ownership of the inherited control socket.
    pub fn from_inherited() -> Result<Control, ControlError> {
        // SAFETY: F_GETFD only inspects the descriptor table entry.
        if unsafe { libc::fcntl(CONTROL_FD, libc::F_GETFD) } < 0 {
            return Err(ControlError::Missing);
        }
        // SAFETY: fd 3 is open (checked above) and, by the loader's contract,
        // the control socket handed to this process alone; nothing else in
        // this process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
        match socket::getsockopt(&fd, sockopt::SockType) {
            Ok(SockType::SeqPacket) => {}
            _ => return Err(ControlError::Missing),
        }
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        Ok(Control { fd })
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
        socket::setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv)?;
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
            Err(ControlError::Sys(Errno::EAGAIN)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn receive(
        &self,
        flags: MsgFlags,
    ) -> Result<Option<(ToDataplane, Vec<OwnedFd>)>, ControlError> {
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
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
        if len == 0 {
            return Ok(None);
        }
        if truncated {
            return Err(ControlError::Unexpected("truncated message"));
        }
        Ok(Some((ipc::decode(&buf[..len])?, fds)))
    }

    fn send(
        &self,
        msg: &FromDataplane,
        fd: Option<BorrowedFd<'_>>,
        flags: MsgFlags,
    ) -> Result<(), ControlError> {
        let bytes = ipc::encode(msg)?;
        let iov = [IoSlice::new(&bytes)];
        let raw;
        let cmsgs: &[ControlMessage] = match fd {
            Some(fd) => {
                raw = [fd.as_raw_fd()];
                &[ControlMessage::ScmRights(&raw)]
            }
            None => &[],
        };
        socket::sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            cmsgs,
            flags | MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }

    /// Hands the bound AF_XDP socket to the loader.
    pub fn send_ready(&self, ready: XskReady, xsk: BorrowedFd<'_>) -> Result<(), ControlError> {
        self.send(&FromDataplane::Ready(ready), Some(xsk), MsgFlags::empty())
    }

    /// Reports counters without blocking; a full socket skips this report.
    pub fn send_stats(&self, counters: &DataplaneCounters) -> Result<(), ControlError> {
        match self.send(
            &FromDataplane::Stats(Box::new(counters.clone())),
            None,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Err(ControlError::Sys(Errno::EAGAIN)) => Ok(()),
            Err(ControlError::Sys(Errno::EPIPE)) | Err(ControlError::Sys(Errno::ECONNRESET)) => {
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
