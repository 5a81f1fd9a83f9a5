//! The bulk-stream protocol ([`BULK_PROTOCOL`]): a dedicated libp2p stream per transfer, carrying length-prefixed
//! frames (a little-endian `u32` length, then that many bytes). The first frame is a bincode [`BulkRequest`];
//! what follows depends on it. Link measurement uses it today; shard shipping and activations will add requests.
//!
//! Every read is bounded: a frame longer than the reader's limit is an error before anything is allocated.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Deserialize, Serialize};

/// The bulk-stream protocol name (versioned like every protocol here).
pub const BULK_PROTOCOL: &str = "/edge-infer/bulk/9";
const _: () = assert!(crate::is_versioned(BULK_PROTOCOL));

/// Largest frame on a bulk stream.
pub const MAX_FRAME: usize = 8 << 20;
/// Largest request header frame.
pub const MAX_BULK_REQUEST: usize = 4 << 10;
/// Largest echo transfer (each way).
pub const MAX_ECHO_BYTES: u32 = 64 << 20;

/// What a bulk stream is for (its first frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BulkRequest {
    /// Bandwidth probe: the opener sends `bytes` in data frames, the other side reads them all and sends `bytes`
    /// back, then both close.
    Echo { bytes: u32 },
}

impl BulkRequest {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            BulkRequest::Echo { bytes } if *bytes > MAX_ECHO_BYTES => {
                Err(format!("echo of {bytes} bytes exceeds {MAX_ECHO_BYTES}"))
            }
            _ => Ok(()),
        }
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    if data.len() > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("frame of {} bytes", data.len())));
    }
    w.write_all(&(data.len() as u32).to_le_bytes()).await?;
    w.write_all(data).await
}

/// Reads one frame of at most `max` bytes (a longer length prefix is an error, nothing is allocated for it).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max.min(MAX_FRAME) {
        return Err(invalid(format!("frame of {len} bytes exceeds the limit of {}", max.min(MAX_FRAME))));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes the request header frame.
pub async fn write_request<W: AsyncWrite + Unpin>(w: &mut W, req: &BulkRequest) -> std::io::Result<()> {
    let bytes = crate::encode(req, MAX_BULK_REQUEST).map_err(|e| invalid(e.to_string()))?;
    write_frame(w, &bytes).await
}

/// Reads and checks the request header frame.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<BulkRequest> {
    let frame = read_frame(r, MAX_BULK_REQUEST).await?;
    let req: BulkRequest = crate::decode(&frame, MAX_BULK_REQUEST).map_err(|e| invalid(e.to_string()))?;
    req.validate().map_err(invalid)?;
    Ok(req)
}

/// Writes one message as one frame (bincode, at most `max` bytes) and flushes.
pub async fn write_msg<W: AsyncWrite + Unpin, T: serde::Serialize>(
    w: &mut W,
    msg: &T,
    max: usize,
) -> std::io::Result<()> {
    let bytes = crate::encode(msg, max.min(MAX_FRAME)).map_err(|e| invalid(e.to_string()))?;
    write_frame(w, &bytes).await?;
    w.flush().await
}

/// Reads one message frame of at most `max` bytes.
pub async fn read_msg<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> std::io::Result<T> {
    let frame = read_frame(r, max).await?;
    crate::decode(&frame, max.min(MAX_FRAME)).map_err(|e| invalid(e.to_string()))
}

/// Sends `n` bytes as frames of at most 1 MiB.
pub async fn send_bytes<W: AsyncWrite + Unpin>(w: &mut W, mut n: usize) -> std::io::Result<()> {
    let chunk = vec![0u8; n.min(1 << 20)];
    while n > 0 {
        let k = n.min(chunk.len());
        write_frame(w, &chunk[..k]).await?;
        n -= k;
    }
    Ok(())
}

/// Receives exactly `n` bytes of frames (more is an error).
pub async fn recv_bytes<R: AsyncRead + Unpin>(r: &mut R, mut n: usize) -> std::io::Result<()> {
    while n > 0 {
        let f = read_frame(r, n.min(MAX_FRAME)).await?;
        if f.is_empty() {
            return Err(invalid("empty data frame".into()));
        }
        n -= f.len();
    }
    Ok(())
}

/// The answering side of [`BulkRequest::Echo`].
pub async fn serve_echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, bytes: u32) -> std::io::Result<()> {
    recv_bytes(s, bytes as usize).await?;
    send_bytes(s, bytes as usize).await?;
    s.close().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn frames_round_trip_and_limits_hold() {
        block_on(async {
            let mut buf = Cursor::new(Vec::new());
            write_request(&mut buf, &BulkRequest::Echo { bytes: 3 }).await.unwrap();
            write_frame(&mut buf, b"abc").await.unwrap();
            let bytes = buf.into_inner();
            // Golden: length 3, bincode of Echo{3} (variant 0, varint 3), then length 3 and "abc".
            assert_eq!(bytes, [2, 0, 0, 0, 0, 3, 3, 0, 0, 0, b'a', b'b', b'c']);
            let mut r = Cursor::new(bytes);
            assert_eq!(read_request(&mut r).await.unwrap(), BulkRequest::Echo { bytes: 3 });
            assert_eq!(read_frame(&mut r, 3).await.unwrap(), b"abc");
            // EOF is an error, not a hang or an empty frame.
            assert!(read_frame(&mut r, 3).await.is_err());
        });
    }

    #[test]
    fn oversized_truncated_and_bad_headers_are_errors() {
        block_on(async {
            // A length prefix of 4 GiB is refused without allocating.
            let mut r = Cursor::new(vec![0xff, 0xff, 0xff, 0xff, 1, 2]);
            assert!(read_frame(&mut r, MAX_FRAME).await.is_err());
            // One byte over the reader's limit.
            let mut r = Cursor::new([5u32.to_le_bytes().to_vec(), vec![0; 5]].concat());
            assert!(read_frame(&mut r, 4).await.is_err());
            // Truncated payload.
            let mut r = Cursor::new([5u32.to_le_bytes().to_vec(), vec![0; 3]].concat());
            assert!(read_frame(&mut r, 16).await.is_err());
            // A header asking for more than the echo limit.
            let mut buf = Cursor::new(Vec::new());
            write_request(&mut buf, &BulkRequest::Echo { bytes: MAX_ECHO_BYTES + 1 }).await.unwrap();
            assert!(read_request(&mut Cursor::new(buf.into_inner())).await.is_err());
            // Garbage header.
            let mut r = Cursor::new([3u32.to_le_bytes().to_vec(), vec![9, 9, 9]].concat());
            assert!(read_request(&mut r).await.is_err());
            assert!(write_frame(&mut Cursor::new(Vec::new()), &vec![0; MAX_FRAME + 1]).await.is_err());
        });
    }

    #[test]
    fn echo_moves_exactly_the_requested_bytes() {
        block_on(async {
            // The answering side reads 2.5 MiB (three frames) and writes 2.5 MiB back.
            let n = (5 << 20) / 2;
            let mut input = Cursor::new(Vec::new());
            send_bytes(&mut input, n).await.unwrap();
            let mut duplex = Duplex { r: Cursor::new(input.into_inner()), w: Vec::new() };
            serve_echo(&mut duplex, n as u32).await.unwrap();
            let mut back = Cursor::new(duplex.w);
            recv_bytes(&mut back, n).await.unwrap();
            assert!(read_frame(&mut back, 1).await.is_err(), "nothing more");
        });
    }

    /// Reads from one buffer, writes to another.
    struct Duplex {
        r: Cursor<Vec<u8>>,
        w: Vec<u8>,
    }
    impl AsyncRead for Duplex {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.r).poll_read(cx, buf)
        }
    }
    impl AsyncWrite for Duplex {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.w.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }
}
