//! The control socket: one JSON request per line, one JSON answer per line.
//! Spoken by the `xdpdns` CLI (`status`, `reload`, `restart-queue`), found
//! from the configuration. Each request goes to the run loop, which answers.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::status::Status;

/// A request for the run loop, with where its answer goes.
pub struct Ask {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Re-read the configuration (from `path`, or the file the instance runs from).
    Reload {
        path: Option<PathBuf>,
    },
    /// Replace one queue's dataplane.
    RestartQueue {
        queue: u32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    /// The request was carried out; what changed.
    Done(Vec<String>),
    Error(String),
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

pub async fn serve(listener: UnixListener, run_loop: mpsc::UnboundedSender<Ask>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let run_loop = run_loop.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = answer(stream, &run_loop).await {
                debug!(error = %e, "control connection");
            }
        });
    }
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

async fn answer(stream: UnixStream, run_loop: &mpsc::UnboundedSender<Ask>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST as u64));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => ask(run_loop, request).await,
        Err(e) => Response::Error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
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
