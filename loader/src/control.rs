//! The control socket: one JSON request per line, one JSON answer per line.
//! Spoken by the `xdpdns` CLI (`status`, `reload`, `restart-queue`), found
//! from the configuration. Each request goes to the run loop, which answers.
//!
//! Who may ask what is decided from the peer's credentials as the kernel
//! gives them (SO_PEERCRED, SO_PEERGROUPS): `status` needs `control.group`
//! (the socket is mode 0660 in that group), `reload` and `restart-queue`
//! need root, the loader's own user or `control.admin_group`. Requests
//! carry no paths: a reload re-reads the file the instance runs from. A
//! request must arrive within [`READ_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] are served at once.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;
use xdpdns_common::config::ControlSection;

use crate::status::Status;

/// A request for the run loop, with where its answer goes.
pub struct Ask {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 4 * 1024;
/// A request line must arrive within this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed.
pub const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Re-read the configuration the instance runs from. (A struct
    /// variant: an unknown field such as a path is refused.)
    Reload {},
    /// Replace one queue's dataplane.
    RestartQueue {
        queue: u32,
    },
    /// Block a client prefix in XDP, for `for_s` seconds (None: until deleted).
    BlockAdd {
        prefix: String,
        for_s: Option<u64>,
        /// TCP to listen addresses dropped too.
        #[serde(default)]
        tcp: bool,
        /// What its UDP queries get.
        #[serde(default)]
        action: xdpdns_common::config::BlockAction,
    },
    /// Lift a run-time block.
    BlockDel {
        prefix: String,
    },
    /// The run-time blocks.
    BlockList {},
    /// Remove packet cache entries: NAME's (of TYPE only, if given), or
    /// those at or below it with `suffix`.
    CachePurge {
        name: String,
        #[serde(default)]
        qtype: Option<String>,
        #[serde(default)]
        suffix: bool,
    },
}

impl Request {
    fn needs_admin(&self) -> bool {
        !matches!(self, Request::Status | Request::BlockList {})
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    /// The request was carried out; what changed.
    Done(Vec<String>),
    Error(String),
}

/// Who may do what, as gids.
#[derive(Debug, Clone)]
pub struct Roles {
    status_gid: Option<u32>,
    admin_gid: Option<u32>,
    loader_uid: u32,
}

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Nobody,
    Status,
    Admin,
}

impl Roles {
    pub fn new(c: &ControlSection) -> anyhow::Result<Roles> {
        let gid = |key: &str, name: &Option<String>| -> anyhow::Result<Option<u32>> {
            match name {
                None => Ok(None),
                Some(n) => Ok(Some(
                    nix::unistd::Group::from_name(n)?
                        .ok_or_else(|| {
                            anyhow::anyhow!("control.{key}: no group {n:?} on this system")
                        })?
                        .gid
                        .as_raw(),
                )),
            }
        };
        Ok(Roles {
            status_gid: gid("group", &c.group)?,
            admin_gid: gid("admin_group", &c.admin_group)?,
            loader_uid: nix::unistd::geteuid().as_raw(),
        })
    }

    /// The role of a peer with `uid`, primary `gid` and `groups`.
    pub fn of(&self, uid: u32, gid: u32, groups: &[u32]) -> Role {
        let member = |g: Option<u32>| g.is_some_and(|g| gid == g || groups.contains(&g));
        if uid == 0 || uid == self.loader_uid || member(self.admin_gid) {
            Role::Admin
        } else if member(self.status_gid) {
            Role::Status
        } else {
            Role::Nobody
        }
    }
}

/// Binds the control socket, mode 0660, group `group` (root's if `None`).
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    if let Some(name) = group {
        let g = nix::unistd::Group::from_name(name)?
            .with_context(|| format!("control.group: no group {name:?} on this system"))?;
        nix::unistd::chown(path, None, Some(g.gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, run_loop: mpsc::UnboundedSender<Ask>, roles: Roles) {
    let cap = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let roles = Arc::new(roles);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                debug!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            continue;
        };
        let run_loop = run_loop.clone();
        let roles = roles.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = answer(stream, &run_loop, &roles).await {
                debug!(error = %e, "control connection");
            }
            drop(permit);
        });
    }
}

/// The peer's supplementary groups (SO_PEERGROUPS), at most 64.
fn peer_groups(stream: &UnixStream) -> Vec<u32> {
    let mut groups = [0 as libc::gid_t; 64];
    let mut len = std::mem::size_of_val(&groups) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `groups`, and
    // `len` then says how many it wrote.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Vec::new();
    }
    let n = len as usize / std::mem::size_of::<libc::gid_t>();
    groups[..n.min(groups.len())].to_vec()
}

/// Asks the run loop; an error answer if it is gone.
pub async fn ask(run_loop: &mpsc::UnboundedSender<Ask>, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if run_loop.send(Ask { request, reply }).is_err() {
        return Response::Error("the instance is shutting down".into());
    }
    answer
        .await
        .unwrap_or_else(|_| Response::Error("the instance is shutting down".into()))
}

async fn answer(
    stream: UnixStream,
    run_loop: &mpsc::UnboundedSender<Ask>,
    roles: &Roles,
) -> std::io::Result<()> {
    let role = match stream.peer_cred() {
        Ok(c) => roles.of(c.uid(), c.gid(), &peer_groups(&stream)),
        Err(_) => Role::Nobody,
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST as u64));
    let mut line = String::new();
    let response = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Response::Error(format!("no request within {READ_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::Error(format!("bad request: {e}")),
            Ok(_) if role == Role::Nobody => {
                Response::Error("permission denied: not in control.group".into())
            }
            Ok(r) if r.needs_admin() && role != Role::Admin => Response::Error(
                "permission denied: this needs root, the loader's user or control.admin_group"
                    .into(),
            ),
            Ok(request) => ask(run_loop, request).await,
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    tokio::time::timeout(READ_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The client side: one request, one response.
pub async fn request(path: &Path, req: &Request) -> anyhow::Result<Response> {
    use anyhow::Context;
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach the instance at {} (is `xdpdns run` running?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reader = BufReader::new(read);
    let mut answer = String::new();
    reader.read_line(&mut answer).await?;
    serde_json::from_str(&answer).context("malformed answer from the instance")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "xdpdns-control-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn requests_reach_the_run_loop_and_answers_come_back() {
        let dir = tempdir();
        let path = dir.join("control.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let listener = bind(&path, None).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o660);
            let (tx, mut rx) = mpsc::unbounded_channel::<Ask>();
            let roles = Roles::new(&ControlSection::default()).unwrap();
            tokio::task::spawn_local(serve(listener, tx, roles));
            // A stand-in for the run loop.
            tokio::task::spawn_local(async move {
                while let Some(ask) = rx.recv().await {
                    let r = match ask.request {
                        Request::RestartQueue { queue } => {
                            Response::Done(vec![format!("q{queue}")])
                        }
                        other => Response::Error(format!("{other:?}")),
                    };
                    let _ = ask.reply.send(r);
                }
            });
            match request(&path, &Request::RestartQueue { queue: 3 })
                .await
                .unwrap()
            {
                Response::Done(lines) => assert_eq!(lines, ["q3"]),
                other => panic!("{other:?}"),
            }
            // Garbage gets an error answer, and the server keeps serving.
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(b"{\"command\":\"explode\"}\n").await.unwrap();
            let mut answer = String::new();
            BufReader::new(s).read_line(&mut answer).await.unwrap();
            assert!(answer.contains("bad request"), "{answer}");
            assert!(matches!(
                request(&path, &Request::Status).await.unwrap(),
                Response::Error(_)
            ));
            // A reload naming a path is refused: requests carry no paths.
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(b"{\"command\":\"reload\",\"path\":\"/etc/shadow\"}\n")
                .await
                .unwrap();
            let mut answer = String::new();
            BufReader::new(s).read_line(&mut answer).await.unwrap();
            assert!(
                answer.contains("bad request") && answer.contains("path"),
                "{answer}"
            );
            // A client that sends nothing is cut after the read timeout.
            let s = UnixStream::connect(&path).await.unwrap();
            let mut answer = String::new();
            let t = std::time::Instant::now();
            BufReader::new(s).read_line(&mut answer).await.unwrap();
            assert!(answer.contains("no request within"), "{answer}");
            assert!(t.elapsed() < READ_TIMEOUT * 3);
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn roles_follow_uid_and_groups() {
        let r = Roles {
            status_gid: Some(100),
            admin_gid: Some(200),
            loader_uid: 50,
        };
        assert_eq!(r.of(0, 0, &[]), Role::Admin, "root");
        assert_eq!(r.of(50, 9, &[]), Role::Admin, "the loader's user");
        assert_eq!(r.of(1000, 200, &[]), Role::Admin, "admin group, primary");
        assert_eq!(
            r.of(1000, 9, &[7, 200]),
            Role::Admin,
            "admin group, supplementary"
        );
        assert_eq!(r.of(1000, 100, &[]), Role::Status);
        assert_eq!(r.of(1000, 9, &[100]), Role::Status);
        assert_eq!(r.of(1000, 9, &[7]), Role::Nobody);
        let none = Roles {
            status_gid: None,
            admin_gid: None,
            loader_uid: 50,
        };
        assert_eq!(none.of(1000, 100, &[100, 200]), Role::Nobody);
        assert!(Request::Reload {}.needs_admin() && !Request::Status.needs_admin());
        let add = Request::BlockAdd {
            prefix: "192.0.2.0/24".into(),
            for_s: None,
            tcp: false,
            action: xdpdns_common::config::BlockAction::Refused,
        };
        let del = Request::BlockDel {
            prefix: "192.0.2.0/24".into(),
        };
        assert!(add.needs_admin() && del.needs_admin() && !Request::BlockList {}.needs_admin());
        let purge = Request::CachePurge {
            name: "example.test".into(),
            qtype: None,
            suffix: true,
        };
        assert!(
            purge.needs_admin(),
            "purging is the admin's; stats come with status"
        );
    }

    #[test]
    fn without_a_run_loop_the_answer_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel::<Ask>();
        drop(rx);
        match rt.block_on(ask(&tx, Request::Status)) {
            Response::Error(e) => assert!(e.contains("shutting down")),
            other => panic!("{other:?}"),
        }
    }
}
