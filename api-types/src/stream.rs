//! Framing of the interactive exec stream (`GET /api/v1/replicas/{name}/attach` after
//! `Upgrade: smr-exec`), shared by the node that serves it and the client that opens it.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The `Upgrade` protocol name of interactive exec.
pub const EXEC_PROTOCOL: &str = "smr-exec";

/// Frame types. Client to node: stdin data, a resize (`cols`, `rows` as big-endian u16), the end
/// of stdin. Node to client: output data, the exit code (big-endian i64, last frame), an error
/// message (UTF-8, last frame).
pub const FRAME_STDIN: u8 = 0;
pub const FRAME_RESIZE: u8 = 1;
pub const FRAME_STDIN_END: u8 = 2;
pub const FRAME_OUTPUT: u8 = 3;
pub const FRAME_EXIT: u8 = 4;
pub const FRAME_ERROR: u8 = 5;

/// Largest frame payload accepted.
pub const MAX_FRAME: usize = 1 << 20;

/// Writes one frame: type (1 byte), payload length (4 bytes, big-endian), payload.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame; `None` at a clean end of the stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is too large"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(64);
        write_frame(&mut a, FRAME_OUTPUT, b"hello")
            .await
            .expect("write");
        write_frame(&mut a, FRAME_EXIT, &3i64.to_be_bytes())
            .await
            .expect("write");
        drop(a);
        assert_eq!(
            read_frame(&mut b).await.expect("read"),
            Some((FRAME_OUTPUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut b).await.expect("read"),
            Some((FRAME_EXIT, 3i64.to_be_bytes().to_vec()))
        );
        assert_eq!(read_frame(&mut b).await.expect("read"), None);
    }

    #[test]
    fn percent_encoding_keeps_unreserved_characters() {
        assert_eq!(
            percent_encode(r#"["sh","-c"]"#),
            "%5B%22sh%22%2C%22-c%22%5D"
        );
    }
}
