//! The libp2p request-response codec of the project: one message per stream, encoded with [`crate::wire`], with
//! separate hard limits for requests and responses (after rust-libp2p's `request_response::cbor` codec).
//!
//! A message is the whole stream: the writer writes the encoding and closes its side, the reader reads to the end
//! of the stream through `take(limit + 1)`, so it never reads (or buffers) more than `limit + 1` bytes; a message
//! of `limit + 1` bytes or more is an [`io::ErrorKind::InvalidData`] error, as is any malformed encoding. A writer
//! refuses to send a message over the limit ([`io::ErrorKind::InvalidInput`]) instead of having the peer drop it.
//! (libp2p's request-response handler closes the stream again after `write_*`; a second close is a no-op on
//! yamux and QUIC streams.)

use std::io;
use std::marker::PhantomData;

use futures::prelude::*;
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Serialize};

use crate::control::{ControlRequest, ControlResponse, MAX_CONTROL_REQUEST, MAX_CONTROL_RESPONSE};
use crate::wire::{self, WireError};

/// A request-response codec for `Req`/`Resp`, at most `REQ_MAX`/`RESP_MAX` encoded bytes.
pub struct BincodeCodec<Req, Resp, const REQ_MAX: usize, const RESP_MAX: usize> {
    // `fn() -> ...`: the codec holds no values, so it is Send + Sync whatever the message types.
    _messages: PhantomData<fn() -> (Req, Resp)>,
}

/// The codec of [`crate::CONTROL_PROTOCOL`].
pub type ControlCodec = BincodeCodec<ControlRequest, ControlResponse, MAX_CONTROL_REQUEST, MAX_CONTROL_RESPONSE>;

impl<Req, Resp, const REQ_MAX: usize, const RESP_MAX: usize> BincodeCodec<Req, Resp, REQ_MAX, RESP_MAX> {
    /// Largest request, in bytes.
    pub const REQUEST_MAX: usize = REQ_MAX;
    /// Largest response, in bytes.
    pub const RESPONSE_MAX: usize = RESP_MAX;

    pub fn new() -> Self {
        BincodeCodec { _messages: PhantomData }
    }
}

impl<Req, Resp, const REQ_MAX: usize, const RESP_MAX: usize> Default for BincodeCodec<Req, Resp, REQ_MAX, RESP_MAX> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req, Resp, const REQ_MAX: usize, const RESP_MAX: usize> Clone for BincodeCodec<Req, Resp, REQ_MAX, RESP_MAX> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<Req, Resp, const REQ_MAX: usize, const RESP_MAX: usize> std::fmt::Debug
    for BincodeCodec<Req, Resp, REQ_MAX, RESP_MAX>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BincodeCodec").field("request_max", &REQ_MAX).field("response_max", &RESP_MAX).finish()
    }
}

impl<Req, Resp, const REQ_MAX: usize, const RESP_MAX: usize> libp2p::request_response::Codec
    for BincodeCodec<Req, Resp, REQ_MAX, RESP_MAX>
where
    Req: Send + Serialize + DeserializeOwned,
    Resp: Send + Serialize + DeserializeOwned,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io, REQ_MAX).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io, RESP_MAX).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, req, REQ_MAX).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, resp: Resp) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, resp, RESP_MAX).await
    }
}

/// Reads one message (the rest of the stream), at most `max` bytes.
pub async fn read_message<M, T>(io: &mut T, max: usize) -> io::Result<M>
where
    M: DeserializeOwned,
    T: AsyncRead + Unpin + Send,
{
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        // `len` is a lower bound: the rest of the stream is left unread.
        return Err(invalid_data(WireError::TooLarge { len: buf.len(), max }));
    }
    wire::decode(&buf, max).map_err(invalid_data)
}

/// Writes one message, at most `max` bytes, and closes the stream.
pub async fn write_message<M, T>(io: &mut T, msg: M, max: usize) -> io::Result<()>
where
    M: Serialize + Send,
    T: AsyncWrite + Unpin + Send,
{
    let bytes = wire::encode(&msg, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&bytes).await?;
    io.close().await
}

fn invalid_data(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    type Small = BincodeCodec<Vec<u8>, String, 32, 16>;

    fn proto() -> StreamProtocol {
        crate::control::control_protocol()
    }

    /// Writes with `write`, then reads the bytes back with `read`.
    fn written(f: impl FnOnce(&mut Cursor<Vec<u8>>) -> io::Result<()>) -> io::Result<Vec<u8>> {
        let mut c = Cursor::new(Vec::new());
        f(&mut c)?;
        Ok(c.into_inner())
    }

    #[test]
    fn control_round_trip() {
        let mut codec = ControlCodec::default();
        let req = ControlRequest::Probe { payload: vec![9; 1000], reply_bytes: 4096 };
        let bytes = written(|c| block_on(codec.write_request(&proto(), c, req.clone()))).unwrap();
        assert_eq!(bytes, wire::encode(&req, MAX_CONTROL_REQUEST).unwrap());
        assert_eq!(block_on(codec.read_request(&proto(), &mut Cursor::new(bytes))).unwrap(), req);

        let resp = ControlResponse::Error("no record".into());
        let bytes = written(|c| block_on(codec.write_response(&proto(), c, resp.clone()))).unwrap();
        assert_eq!(block_on(codec.read_response(&proto(), &mut Cursor::new(bytes))).unwrap(), resp);
    }

    #[test]
    fn exactly_at_the_limit_is_accepted_one_over_is_not() {
        let mut codec = Small::default();
        // A Vec<u8> of n bytes encodes as 1 + n bytes (n < 251).
        let at = vec![7u8; 31];
        let bytes = written(|c| block_on(codec.write_request(&proto(), c, at.clone()))).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(block_on(codec.read_request(&proto(), &mut Cursor::new(bytes))).unwrap(), at);

        let over = vec![7u8; 32];
        let e = written(|c| block_on(codec.write_request(&proto(), c, over.clone()))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = block_on(codec.read_request(&proto(), &mut Cursor::new(wire::encode(&over, 64).unwrap()))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        // Responses have their own limit.
        let at = "r".repeat(15);
        let bytes = written(|c| block_on(codec.write_response(&proto(), c, at.clone()))).unwrap();
        assert_eq!(bytes.len(), 16);
        assert_eq!(block_on(codec.read_response(&proto(), &mut Cursor::new(bytes))).unwrap(), at);
        let over = "r".repeat(16);
        let e = written(|c| block_on(codec.write_response(&proto(), c, over.clone()))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e =
            block_on(codec.read_response(&proto(), &mut Cursor::new(wire::encode(&over, 64).unwrap()))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn control_limits_are_exact() {
        let mut codec = ControlCodec::default();
        // Probe: tag (1) + payload length (varint) + payload + reply_bytes (1 for 0).
        let framing = wire::encode(&ControlRequest::Probe { payload: vec![0; 1 << 20], reply_bytes: 0 }, usize::MAX)
            .unwrap()
            .len()
            - (1 << 20);
        let at = ControlRequest::Probe { payload: vec![1; MAX_CONTROL_REQUEST - framing], reply_bytes: 0 };
        let bytes = written(|c| block_on(codec.write_request(&proto(), c, at.clone()))).unwrap();
        assert_eq!(bytes.len(), MAX_CONTROL_REQUEST);
        assert_eq!(block_on(codec.read_request(&proto(), &mut Cursor::new(bytes))).unwrap(), at);
        let over = ControlRequest::Probe { payload: vec![1; MAX_CONTROL_REQUEST - framing + 1], reply_bytes: 0 };
        let e = written(|c| block_on(codec.write_request(&proto(), c, over.clone()))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let bytes = wire::encode(&over, usize::MAX).unwrap();
        assert_eq!(bytes.len(), MAX_CONTROL_REQUEST + 1);
        let e = block_on(codec.read_request(&proto(), &mut Cursor::new(bytes))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    /// A stream that never ends: counts what the reader pulls from it.
    struct Endless {
        served: usize,
    }

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            buf.fill(0);
            self.served += buf.len();
            std::task::Poll::Ready(Ok(buf.len()))
        }
    }

    #[test]
    fn an_endless_stream_is_read_only_to_the_limit() {
        let mut codec = Small::default();
        let mut s = Endless { served: 0 };
        let e = block_on(codec.read_request(&proto(), &mut s)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(s.served, 33);
        let mut s = Endless { served: 0 };
        let e = block_on(codec.read_response(&proto(), &mut s)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(s.served, 17);
    }

    #[test]
    fn garbage_and_truncation_are_invalid_data() {
        let mut codec = ControlCodec::default();
        for bytes in [vec![], vec![3], vec![0, 0], vec![2, 5, 1, 2]] {
            let e = block_on(codec.read_request(&proto(), &mut Cursor::new(bytes.clone()))).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bytes:?}");
        }
    }

    #[test]
    fn the_writer_closes_the_stream() {
        /// Records whether `close` was called.
        #[derive(Default)]
        struct Sink {
            data: Vec<u8>,
            closed: bool,
        }
        impl AsyncWrite for Sink {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<io::Result<usize>> {
                assert!(!self.closed, "write after close");
                self.data.extend_from_slice(buf);
                std::task::Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_close(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                self.closed = true;
                std::task::Poll::Ready(Ok(()))
            }
        }
        let mut codec = ControlCodec::default();
        let mut sink = Sink::default();
        block_on(codec.write_request(&proto(), &mut sink, ControlRequest::Peers)).unwrap();
        assert!(sink.closed);
        assert_eq!(sink.data, [1]);
    }
}
