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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir() -> PathBuf {
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
            tokio::task::spawn_local(serve(listener, tx));
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
        });
        std::fs::remove_dir_all(dir).unwrap();
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
