//! A guard on a WebSocket's incoming bytes, ahead of actix-ws's frame decoder. The decoder
//! buffers a whole frame before it compares its length with `max_frame_size`, so a header
//! claiming 2 GiB followed by data grew the server by as much as the client sent. The guard reads
//! each frame header as it passes and ends the stream at once when a frame declares more than
//! the socket's limit, or when a socket that has not authenticated yet has sent more than
//! [`UNAUTHENTICATED_MAX_BYTES`]. Bytes pass through unchanged; the session answers the error
//! with `protocol_error` and closes with 1009.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

/// Most bytes a socket may send before its first message has authenticated it: the auth
/// message is a token of about a hundred bytes.
pub const UNAUTHENTICATED_MAX_BYTES: u64 = 4096;

/// Where the guard is in the client's frame sequence.
enum At {
    /// Reading a header: the bytes so far (at most 14: 2, an extended length of 2 or 8, a mask).
    Header { buf: [u8; 14], have: usize },
    /// Inside a payload: this many bytes are still to come.
    Payload(u64),
}

/// What the guard refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A frame header declared this many bytes.
    Frame(u64),
    /// The socket sent this many bytes before authenticating.
    Unauthenticated(u64),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Frame(n) => write!(f, "a frame of {n} bytes is over the limit"),
            Refused::Unauthenticated(n) => write!(
                f,
                "{n} bytes before authenticating (at most {UNAUTHENTICATED_MAX_BYTES})"
            ),
        }
    }
}

/// Checks frame headers in a byte stream (client to server, so every frame is masked).
pub struct FrameCheck {
    at: At,
    max_frame: u64,
    sent: u64,
    authenticated: Arc<AtomicBool>,
}

impl FrameCheck {
    /// A check allowing frames of up to `max_frame` payload bytes; `authenticated` is set by
    /// the session once the first message has authenticated the socket.
    pub fn new(max_frame: usize, authenticated: Arc<AtomicBool>) -> FrameCheck {
        FrameCheck {
            at: At::Header {
                buf: [0; 14],
                have: 0,
            },
            max_frame: max_frame as u64,
            sent: 0,
            authenticated,
        }
    }

    /// Follows `chunk` through the frame sequence; an error at the first frame over the limit.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Refused> {
        self.sent = self.sent.saturating_add(chunk.len() as u64);
        if self.sent > UNAUTHENTICATED_MAX_BYTES && !self.authenticated.load(Ordering::Relaxed) {
            return Err(Refused::Unauthenticated(self.sent));
        }
        while !chunk.is_empty() {
            match &mut self.at {
                At::Payload(left) => {
                    let take = (*left).min(chunk.len() as u64);
                    *left -= take;
                    chunk = &chunk[take as usize..];
                    if *left == 0 {
                        self.at = At::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
                At::Header { buf, have } => {
                    let need = header_len(&buf[..*have]);
                    let take = (need - *have).min(chunk.len());
                    buf[*have..*have + take].copy_from_slice(&chunk[..take]);
                    *have += take;
                    chunk = &chunk[take..];
                    // The length is known once the extended length is in: refuse before the mask.
                    if let Some(len) = payload_len(&buf[..*have]) {
                        if len > self.max_frame {
                            return Err(Refused::Frame(len));
                        }
                        if *have == header_len(&buf[..*have]) {
                            self.at = if len == 0 {
                                At::Header {
                                    buf: [0; 14],
                                    have: 0,
                                }
                            } else {
                                At::Payload(len)
                            };
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The whole header's length as far as `h` tells it (2 until the second byte is in).
fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The payload length, once the header bytes that carry it are in.
fn payload_len(h: &[u8]) -> Option<u64> {
    if h.len() < 2 {
        return None;
    }
    match h[1] & 0x7f {
        126 if h.len() >= 4 => Some(u16::from_be_bytes([h[2], h[3]]) as u64),
        127 if h.len() >= 10 => Some(u64::from_be_bytes(h[2..10].try_into().unwrap())),
        126 | 127 => None,
        n => Some(n as u64),
    }
}

/// The request payload with a [`FrameCheck`] on it.
pub struct Guarded<S> {
    inner: S,
    check: FrameCheck,
    done: bool,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, check: FrameCheck) -> Guarded<S> {
        Guarded {
            inner,
            check,
            done: false,
        }
    }
}

impl<S> Stream for Guarded<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => match this.check.feed(&bytes) {
                Ok(()) => Poll::Ready(Some(Ok(bytes))),
                Err(refused) => {
                    this.done = true;
                    Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        refused.to_string(),
                    )))))
                }
            },
            other => other,
        }
    }
}

/// An accepted WebSocket: the 101 answer, the session, its guarded message stream, and the
/// flag the session sets once the socket has authenticated (read by the guard).
pub struct Upgraded {
    pub resp: actix_web::HttpResponse,
    pub session: actix_ws::Session,
    pub stream: actix_ws::MessageStream,
    pub authenticated: Arc<AtomicBool>,
}

/// The WebSocket handshake with the guard on the request's payload: frames over `max_frame`
/// are refused at their header, an unauthenticated socket may send only a few KiB.
pub async fn handshake(
    req: &actix_web::HttpRequest,
    body: actix_web::web::Payload,
    max_frame: usize,
) -> Result<Upgraded, crate::api::ApiError> {
    use actix_web::FromRequest;
    let authenticated = Arc::new(AtomicBool::new(false));
    let check = FrameCheck::new(max_frame, authenticated.clone());
    let guarded = Guarded::new(body.into_inner(), check);
    let boxed: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(guarded);
    let mut payload = actix_web::dev::Payload::from(boxed);
    let body = actix_web::web::Payload::from_request(req, &mut payload)
        .await
        .expect("taking a payload cannot fail");
    let (resp, session, stream) = actix_ws::handle(req, body)
        .map_err(|e| crate::api::ApiError::new(crate::event::Code::BadRequest, e.to_string()))?;
    Ok(Upgraded {
        resp,
        session,
        stream,
        authenticated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header (payload not included).
    fn header(len: u64) -> Vec<u8> {
        let mut h = vec![0x81];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= u16::MAX as u64 {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f = header(len as u64);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    fn authed() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(true))
    }

    #[test]
    fn frames_within_the_limit_pass_in_any_chunking() {
        let mut bytes = Vec::new();
        for len in [0, 5, 125, 126, 1000, 65_535, 65_536, 100_000] {
            bytes.extend(frame(len));
        }
        for chunk in [1, 2, 3, 7, 13, 1000, bytes.len()] {
            let mut c = FrameCheck::new(100_000, authed());
            for part in bytes.chunks(chunk) {
                c.feed(part).unwrap();
            }
            assert!(matches!(c.at, At::Header { have: 0, .. }), "chunk {chunk}");
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_at_its_header_whatever_follows() {
        for (max, claimed) in [
            (100_000, 100_001u64),
            (1000, 60_000),
            (100_000, 2 << 30),
            (100_000, u64::MAX >> 1),
        ] {
            let mut c = FrameCheck::new(max, authed());
            c.feed(&frame(10)).unwrap();
            let h = header(claimed);
            // The length alone is enough: refused before the mask and any payload arrive.
            let upto_len = if claimed > u16::MAX as u64 { 10 } else { 4 };
            assert_eq!(c.feed(&h[..upto_len]), Err(Refused::Frame(claimed)));
        }
        let mut c = FrameCheck::new(100, authed());
        assert_eq!(c.feed(&frame(101)), Err(Refused::Frame(101)));
    }

    #[test]
    fn an_unauthenticated_socket_may_send_only_a_few_kib() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut c = FrameCheck::new(1 << 20, flag.clone());
        c.feed(&frame(3000)).unwrap();
        let two = 2 * frame(3000).len() as u64;
        assert_eq!(c.feed(&frame(3000)), Err(Refused::Unauthenticated(two)));
        let mut c = FrameCheck::new(1 << 20, flag.clone());
        c.feed(&frame(3000)).unwrap();
        flag.store(true, Ordering::Relaxed);
        c.feed(&frame(300_000)).unwrap();
    }
}
