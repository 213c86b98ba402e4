//! `smrctl exec -i/-t`: an interactive command in a replica over the API's upgraded connection
//! (frames of [`api_types::stream`]). With `-t` on a terminal, the local terminal is put in raw
//! mode (`stty raw -echo`) for the session and restored after; window size changes are sent.

use std::io::IsTerminal as _;
use std::process::{Command, Stdio};

use api_types::client::{Client, ClientError};
use api_types::stream::{
    FRAME_ERROR, FRAME_EXIT, FRAME_OUTPUT, FRAME_RESIZE, FRAME_STDIN, FRAME_STDIN_END, read_frame,
    write_frame,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The terminal on stdin in raw mode until dropped.
struct RawMode {
    saved: String,
}

impl RawMode {
    fn enable() -> Option<RawMode> {
        let saved = stty(&["-g"])?;
        stty(&["raw", "-echo"])?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = stty(&[self.saved.trim()]);
    }
}

/// Runs `stty ARGS` on the terminal of stdin; its output, or `None` if it failed.
fn stty(args: &[&str]) -> Option<String> {
    let out = Command::new("stty")
        .args(args)
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (columns, rows) of the terminal on stdin.
fn terminal_size() -> Option<(u16, u16)> {
    let text = stty(&["size"])?;
    let mut parts = text.split_whitespace();
    let rows = parts.next()?.parse().ok()?;
    let cols = parts.next()?.parse().ok()?;
    Some((cols, rows))
}

fn io_error(client: &Client, e: std::io::Error) -> ClientError {
    ClientError::Connect {
        url: client.base_url().to_string(),
        reason: e.to_string(),
    }
}

/// Sends stdin, its end and window size changes to the node, until aborted.
async fn pump_input<W: tokio::io::AsyncWrite + Unpin>(
    mut to_node: W,
    stdin: bool,
    watch_size: bool,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut winch = if watch_size {
        signal(SignalKind::window_change()).ok()
    } else {
        None
    };
    let mut local = tokio::io::stdin();
    let mut buf = vec![0u8; 8192];
    let mut reading = stdin;
    if !reading {
        write_frame(&mut to_node, FRAME_STDIN_END, &[]).await?;
    }
    // The write side stays open after the end of stdin: the node answers until the command ends.
    loop {
        tokio::select! {
            n = local.read(&mut buf), if reading => match n {
                Ok(0) | Err(_) => {
                    reading = false;
                    write_frame(&mut to_node, FRAME_STDIN_END, &[]).await?;
                }
                Ok(n) => write_frame(&mut to_node, FRAME_STDIN, &buf[..n]).await?,
            },
            Some(()) = async {
                match winch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((cols, rows)) = terminal_size() {
                    let mut payload = cols.to_be_bytes().to_vec();
                    payload.extend_from_slice(&rows.to_be_bytes());
                    write_frame(&mut to_node, FRAME_RESIZE, &payload).await?;
                }
            }
        }
    }
}

/// Runs `command` in `replica`, wiring stdin (with `stdin`) and stdout; allocates a TTY with
/// `tty`. Returns the command's exit code.
pub async fn interactive(
    client: &Client,
    replica: &str,
    command: &[String],
    stdin: bool,
    tty: bool,
) -> Result<i64, ClientError> {
    let on_terminal = std::io::stdin().is_terminal();
    let size = if tty && on_terminal {
        terminal_size()
    } else {
        None
    };
    let connection = client.attach(replica, command, tty, stdin, size).await?;
    let (mut from_node, to_node) = tokio::io::split(connection);
    let raw = (tty && stdin && on_terminal)
        .then(RawMode::enable)
        .flatten();
    let watch_size = tty && on_terminal;
    let input = tokio::spawn(pump_input(to_node, stdin, watch_size));
    let mut out = tokio::io::stdout();
    let result = loop {
        match read_frame(&mut from_node).await {
            Ok(Some((FRAME_OUTPUT, data))) => {
                if let Err(e) = out.write_all(&data).await {
                    break Err(io_error(client, e));
                }
                let _ = out.flush().await;
            }
            Ok(Some((FRAME_EXIT, code))) if code.len() == 8 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&code);
                break Ok(i64::from_be_bytes(bytes));
            }
            Ok(Some((FRAME_ERROR, message))) => {
                break Err(ClientError::Api {
                    status: 500,
                    code: "exec".into(),
                    message: String::from_utf8_lossy(&message).into_owned(),
                    details: None,
                });
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                break Err(io_error(
                    client,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection closed before the command ended",
                    ),
                ));
            }
            Err(e) => break Err(io_error(client, e)),
        }
    };
    input.abort();
    drop(raw);
    result
}
