//! What protects the server from slow or absent clients: a write timeout on each connection,
//! request bodies read on the host (capped, each read bounded in time) before a request takes
//! an instance slot, and accept errors logged at a bounded rate.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection whose writes fail once they have made no progress for `timeout`: a client
/// that stops reading its responses cannot hold a connection (and a request's instance, while
/// the body is written) forever.
pub(crate) struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Running while a write or flush is blocked; reset by any progress.
    stalled_since: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            timeout,
            stalled_since: None,
        }
    }

    /// After the inner write returned `Pending`: an error once the stall is too long.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let stall = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled_since = None;
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not read the response in time",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match outcome {
            Poll::Pending => self.poll_stall(cx).map(Err),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bounded(cx, outcome)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_flush(cx);
        this.bounded(cx, outcome)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.bounded(cx, outcome)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bounded(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why a request body was not read whole.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    /// Longer than the limit (declared or sent); reading stopped there.
    TooLarge,
    /// No bytes arrived for the per-read timeout, or the request's deadline passed.
    Stalled,
    /// The connection failed mid-body.
    Broken,
}

/// Reads `body` whole, refusing more than `limit` bytes (a declared length over it without
/// reading anything), and failing when one read waits longer than `read_timeout` or the whole
/// body is not in by `deadline`.
pub(crate) async fn read_body<B>(
    mut body: B,
    limit: usize,
    read_timeout: Duration,
    deadline: Instant,
) -> Result<Bytes, BodyFailure>
where
    B: Body<Data = Bytes> + Unpin,
{
    let declared = body.size_hint().lower();
    if u64::try_from(limit).is_ok_and(|limit| declared > limit) {
        return Err(BodyFailure::TooLarge);
    }
    let mut collected =
        BytesMut::with_capacity(usize::try_from(declared).unwrap_or(limit).min(limit));
    loop {
        let read_by = deadline.min(Instant::now() + read_timeout);
        let frame = match tokio::time::timeout_at(read_by, body.frame()).await {
            Err(_elapsed) => return Err(BodyFailure::Stalled),
            Ok(None) => return Ok(collected.freeze()),
            Ok(Some(Err(_))) => return Err(BodyFailure::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing the function reads.
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                return Err(BodyFailure::TooLarge);
            }
            collected.extend_from_slice(&data);
        }
    }
}

/// A log line that may repeat many times a second (accept failing while descriptors run out):
/// printed at most once per `interval`, with a count of the repeats it stood for.
pub(crate) struct ThrottledLog {
    interval: Duration,
    last_printed: Option<Instant>,
    suppressed: u64,
}

impl ThrottledLog {
    pub(crate) fn new(interval: Duration) -> ThrottledLog {
        ThrottledLog {
            interval,
            last_printed: None,
            suppressed: 0,
        }
    }

    /// The line to print for an event happening `now`, if any.
    pub(crate) fn line(&mut self, now: Instant, message: &str) -> Option<String> {
        if self
            .last_printed
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last_printed = Some(now);
        let line = match std::mem::take(&mut self.suppressed) {
            0 => message.to_owned(),
            n => format!("{message} (and {n} more like it since the last report)"),
        };
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Frame;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_reads_fails_after_the_timeout() {
        let (server, _client) = tokio::io::duplex(64);
        let mut server = WriteDeadline::new(server, Duration::from_secs(5));
        let started = Instant::now();
        let err = server.write_all(&[0; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = WriteDeadline::new(server, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 64];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                total += tokio::io::AsyncReadExt::read(&mut client, &mut buf)
                    .await
                    .unwrap();
            }
        });
        server.write_all(&[0; 4096]).await.unwrap();
        reader.await.unwrap();
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test]
    async fn bodies_are_read_whole_within_the_limit() {
        let body = Full::new(Bytes::from_static(b"{\"query\": 1}"));
        let read = read_body(body, 12, Duration::from_secs(1), far()).await;
        assert_eq!(read.unwrap(), Bytes::from_static(b"{\"query\": 1}"));
        let body = Full::new(Bytes::from_static(b"{\"query\": 1}"));
        let read = read_body(body, 11, Duration::from_secs(1), far()).await;
        assert_eq!(read.unwrap_err(), BodyFailure::TooLarge);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_fails_at_the_read_timeout_or_the_deadline() {
        let stalled = read_body(
            Trickle::new(Duration::from_secs(3)),
            100,
            Duration::from_secs(2),
            far(),
        );
        assert_eq!(stalled.await.unwrap_err(), BodyFailure::Stalled);
        let deadline = Instant::now() + Duration::from_secs(5);
        let slow = read_body(
            Trickle::new(Duration::from_secs(1)),
            100,
            Duration::from_secs(2),
            deadline,
        );
        assert_eq!(slow.await.unwrap_err(), BodyFailure::Stalled);
        let patient = read_body(
            Trickle::new(Duration::from_secs(1)),
            100,
            Duration::from_secs(2),
            far(),
        );
        assert_eq!(patient.await.unwrap().len(), 20);
    }

    /// One byte every `pause`, twenty times.
    struct Trickle {
        pause: Duration,
        left: u32,
        next: Option<Pin<Box<Sleep>>>,
    }

    impl Trickle {
        fn new(pause: Duration) -> Trickle {
            Trickle {
                pause,
                left: 20,
                next: None,
            }
        }
    }

    impl Body for Trickle {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            let this = self.get_mut();
            if this.left == 0 {
                return Poll::Ready(None);
            }
            let pause = this.pause;
            let next = this
                .next
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            std::task::ready!(next.as_mut().poll(cx));
            this.next = None;
            this.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[test]
    fn repeated_lines_are_printed_once_per_interval_with_a_count() {
        let mut log = ThrottledLog::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(
            log.line(start, "accept failed").as_deref(),
            Some("accept failed")
        );
        for ms in [1, 10, 500, 999] {
            assert_eq!(
                log.line(start + Duration::from_millis(ms), "accept failed"),
                None
            );
        }
        assert_eq!(
            log.line(start + Duration::from_secs(1), "accept failed")
                .as_deref(),
            Some("accept failed (and 4 more like it since the last report)")
        );
        assert_eq!(
            log.line(start + Duration::from_secs(3), "accept failed")
                .as_deref(),
            Some("accept failed")
        );
    }
}
