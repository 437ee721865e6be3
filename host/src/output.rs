//! The component's stdout and stderr: kept in memory, bounded, for trap reports.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The last bytes the component wrote to stdout or stderr.
///
/// Unlike wasmtime-wasi's `MemoryOutputPipe`, which traps the writer once it is full, this
/// keeps accepting and forgets the oldest bytes: a chatty component must not be killed for
/// its logging, and the end of the output (a panic message) is the part worth keeping.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    buffer: Arc<Mutex<Vec<u8>>>,
    capacity: usize,
}

/// Longest last line quoted in an error message.
const MAX_QUOTED_CHARS: usize = 300;

impl GuestOutput {
    pub(crate) fn new(capacity: usize) -> GuestOutput {
        GuestOutput {
            buffer: Arc::new(Mutex::new(Vec::new())),
            capacity,
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        if bytes.len() >= self.capacity {
            buffer.clear();
            buffer.extend_from_slice(&bytes[bytes.len() - self.capacity..]);
            return;
        }
        // Trim in batches of at least `capacity` bytes so appends stay amortised O(1).
        if buffer.len() + bytes.len() > 2 * self.capacity {
            let excess = buffer.len() + bytes.len() - self.capacity;
            buffer.drain(..excess);
        }
        buffer.extend_from_slice(bytes);
    }

    /// Every non-empty line written since the last call, each shortened as by
    /// [`GuestOutput::last_line`], oldest first; the buffer is emptied.
    pub(crate) fn take_lines(&self) -> Vec<String> {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&buffer).into_owned();
        buffer.clear();
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(shorten)
            .collect()
    }

    /// The last non-empty line written, shortened to a few hundred characters.
    pub(crate) fn last_line(&self) -> Option<String> {
        let buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&buffer);
        let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
        Some(shorten(line))
    }
}

fn shorten(line: &str) -> String {
    let mut quoted: String = line.chars().take(MAX_QUOTED_CHARS).collect();
    if quoted.len() < line.len() {
        quoted.push('…');
    }
    quoted
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_when_full() {
        let out = GuestOutput::new(32);
        for _ in 0..100 {
            out.append(b"noise\n");
        }
        out.append(b"panicked at src/lib.rs\n");
        assert_eq!(out.last_line().as_deref(), Some("panicked at src/lib.rs"));
        out.append(b"0123456789012345678901234567890123456789");
        assert_eq!(
            out.last_line().as_deref(),
            Some("89012345678901234567890123456789")
        );
    }

    #[test]
    fn last_line_skips_blank_lines() {
        let out = GuestOutput::new(1024);
        out.append(b"first\nsecond\n\n  \n");
        assert_eq!(out.last_line().as_deref(), Some("second"));
        assert_eq!(GuestOutput::new(16).last_line(), None);
    }

    #[test]
    fn take_lines_returns_each_line_once() {
        let out = GuestOutput::new(1024);
        out.append(b"first\n\nsecond\n");
        assert_eq!(out.take_lines(), ["first", "second"]);
        assert!(out.take_lines().is_empty());
        out.append(b"third");
        assert_eq!(out.take_lines(), ["third"]);
    }

    #[test]
    fn buffer_never_exceeds_twice_the_capacity() {
        let out = GuestOutput::new(10);
        for i in 0..1000u32 {
            out.append(i.to_string().as_bytes());
            assert!(out.buffer.lock().unwrap().len() <= 20);
        }
    }
}
