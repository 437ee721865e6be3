//! What `serve` logs, as `tracing` events on stderr: one access-log line per request (target
//! `taskstore::access`) and the operational messages (`taskstore::serve`, and
//! `taskstore::function` for what the function itself wrote), filtered by `RUST_LOG` and
//! written as logfmt or JSON lines.
//!
//! An access-log line holds the route template, never the path: a task id is the only key
//! to a task, so whoever reads the logs could otherwise read (or change) every task logged.
//! No header value, body or password is ever a field.
//!
//! Access-log lines are buffered and written to stderr in batches by a thread of their own
//! ([`LogSink`]): one `write` per request on an unbuffered stderr cost a request more than
//! the rest of its logging (a system call, and a wakeup of whatever reads the pipe). Every
//! other line is written at once, after the buffered ones, so lines stay in order and a
//! warning is never held back; [`LogFlush`] writes out what is left when `serve` ends.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use super::metrics::Route;

/// Target of the access-log events.
pub const ACCESS_TARGET: &str = "taskstore::access";
/// What `RUST_LOG` is when unset: the server's own lines, and only warnings of its libraries.
pub const DEFAULT_FILTER: &str = "warn,taskstore=info";

/// How `serve` writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `time=… level=… target=… key=value …`, values quoted when they hold spaces.
    Logfmt,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// Longest an access-log line waits in the buffer: lines that arrive meanwhile go out in the
/// same `write`.
const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// Buffered bytes past which lines are written at once by the thread logging them, as without
/// the buffer: a stderr that stops draining slows requests down instead of growing memory.
const MAX_BUFFERED_BYTES: usize = 1 << 20;

/// Installs the process-wide subscriber for `serve`'s events: `format` lines on stderr,
/// filtered by `RUST_LOG` ([`DEFAULT_FILTER`] when unset or unreadable). Keep the returned
/// [`LogFlush`] until the server has stopped: dropping it writes out the buffered lines.
///
/// # Errors
/// A subscriber is already installed.
pub fn install(format: LogFormat) -> anyhow::Result<LogFlush> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (sink, flush) = LogSink::start(Box::new(io::stderr()));
    let on_panic = sink.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_ansi(false);
    let installed = match format {
        LogFormat::Logfmt => builder.event_format(Logfmt).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    // A panic aborts the process: first write out the lines of the requests that finished.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        on_panic.try_flush();
        previous_hook(info);
    }));
    Ok(flush)
}

/// Where the log lines go: access-log lines into a buffer that a thread of its own writes out
/// within [`FLUSH_DELAY`], every other line straight to the output after what is buffered.
#[derive(Clone)]
pub(crate) struct LogSink {
    shared: Arc<SinkShared>,
}

struct SinkShared {
    pending: Mutex<Pending>,
    /// Signalled when the buffer stops being empty, and at close.
    filled: Condvar,
    /// Taken while the pending lock is held, so that batches reach it in buffer order.
    output: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Set by [`LogFlush`]: from then on every line is written at once.
    closed: bool,
}

/// Writes out the buffered log lines when dropped, and stops the thread that writes them.
#[must_use = "dropping it at once turns off the buffering; keep it until the server stops"]
pub struct LogFlush {
    sink: LogSink,
    writer: Option<JoinHandle<()>>,
}

impl LogSink {
    /// A sink whose buffer only fills; [`LogSink::start`] adds the thread that writes it.
    fn new(output: Box<dyn Write + Send>) -> LogSink {
        LogSink {
            shared: Arc::new(SinkShared {
                pending: Mutex::new(Pending::default()),
                filled: Condvar::new(),
                output: Mutex::new(output),
            }),
        }
    }

    pub(crate) fn start(output: Box<dyn Write + Send>) -> (LogSink, LogFlush) {
        let sink = LogSink::new(output);
        let background = sink.clone();
        let writer = std::thread::Builder::new()
            .name("taskstore-log".into())
            .spawn(move || background.write_batches())
            .ok();
        let flush = LogFlush {
            sink: sink.clone(),
            writer,
        };
        (sink, flush)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The writing thread: waits for a first line, lets more gather, writes them in one go.
    fn write_batches(&self) {
        loop {
            {
                let mut pending = self.pending();
                while pending.bytes.is_empty() && !pending.closed {
                    pending = self
                        .shared
                        .filled
                        .wait(pending)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if pending.closed {
                    return;
                }
            }
            std::thread::sleep(FLUSH_DELAY);
            let pending = self.pending();
            // Closed meanwhile: the closer writes what is left.
            if pending.closed {
                return;
            }
            self.write_through(pending, &[]);
        }
    }

    /// Writes what is buffered, then `line`, while holding the output: no other batch or
    /// line can come between. Write errors are dropped, as the subscriber drops them.
    fn write_through(&self, mut pending: MutexGuard<'_, Pending>, line: &[u8]) {
        let buffered = std::mem::take(&mut pending.bytes);
        let mut output = self.shared.output.lock().unwrap_or_else(|e| e.into_inner());
        drop(pending);
        if !buffered.is_empty() {
            let _ = output.write_all(&buffered);
        }
        if !line.is_empty() {
            let _ = output.write_all(line);
        }
        let _ = output.flush();
    }

    /// Writes out the buffer unless a lock is held (a panic inside the logging itself).
    fn try_flush(&self) {
        let (Ok(mut pending), Ok(mut output)) = (
            self.shared.pending.try_lock(),
            self.shared.output.try_lock(),
        ) else {
            return;
        };
        let _ = output.write_all(&std::mem::take(&mut pending.bytes));
        let _ = output.flush();
    }

    fn write_line(&self, line: &[u8], buffered: bool) {
        let mut pending = self.pending();
        if buffered && !pending.closed && pending.bytes.len() + line.len() <= MAX_BUFFERED_BYTES {
            let was_empty = pending.bytes.is_empty();
            pending.bytes.extend_from_slice(line);
            drop(pending);
            if was_empty {
                self.shared.filled.notify_one();
            }
            return;
        }
        self.write_through(pending, line);
    }
}

impl Drop for LogFlush {
    fn drop(&mut self) {
        self.sink.pending().closed = true;
        self.sink.shared.filled.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.sink.write_through(self.sink.pending(), &[]);
    }
}

/// One event's writer: the subscriber formats an event whole and hands it over in one
/// `write_all`.
pub(crate) struct LineWriter<'a> {
    sink: &'a LogSink,
    buffered: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.sink.write_line(line, self.buffered);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            sink: self,
            buffered: false,
        }
    }

    fn make_writer_for(&'a self, metadata: &tracing::Metadata<'_>) -> LineWriter<'a> {
        LineWriter {
            sink: self,
            // Only the access log, the one line per request, waits; operational lines are
            // rare and wanted at once, even if the process is killed right after.
            buffered: metadata.target() == ACCESS_TARGET,
        }
    }
}

/// One request's access-log line.
pub(crate) struct AccessRecord {
    pub(crate) method: &'static str,
    pub(crate) route: Route,
    pub(crate) status: u16,
    pub(crate) duration: Duration,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    /// Requests the instance that served this one had served before; `None` when no
    /// instance ran (the host answered itself).
    pub(crate) instance_reuse: Option<u32>,
}

impl AccessRecord {
    pub(crate) fn emit(&self) {
        // Milliseconds with microsecond precision: readable, and exact enough to sum.
        let duration_ms = (self.duration.as_micros() as f64) / 1000.0;
        tracing::info!(
            target: ACCESS_TARGET,
            method = self.method,
            route = self.route.template(),
            status = self.status,
            duration_ms,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            instance_reuse = self.instance_reuse,
        );
    }
}

/// logfmt lines: `time`, `level`, `target`, then the event's fields (`msg` for its message).
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        writer.write_str("time=")?;
        SystemTime.format_time(&mut writer)?;
        write!(
            writer,
            " level={} target={}",
            metadata.level().as_str().to_ascii_lowercase(),
            metadata.target()
        )?;
        let mut fields = LogfmtFields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writeln!(writer)
    }
}

struct LogfmtFields<'w, 'a> {
    writer: &'w mut Writer<'a>,
    result: fmt::Result,
}

impl LogfmtFields<'_, '_> {
    fn pair(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let key = match field.name() {
            "message" => "msg",
            name => name,
        };
        self.result = write!(self.writer, " {key}=").and_then(|()| write_value(self.writer, value));
    }
}

impl Visit for LogfmtFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.pair(field, &format!("{value:?}"));
    }
}

/// A logfmt value: bare when it is a plain word, else quoted with `"`, `\` and control
/// characters escaped, so one event is always one line.
fn write_value(writer: &mut Writer<'_>, value: &str) -> fmt::Result {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if bare {
        return writer.write_str(value);
    }
    writer.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => writer.write_str("\\\"")?,
            '\\' => writer.write_str("\\\\")?,
            '\n' => writer.write_str("\\n")?,
            '\r' => writer.write_str("\\r")?,
            '\t' => writer.write_str("\\t")?,
            c if c.is_control() => write!(writer, "\\u{{{:x}}}", u32::from(c))?,
            c => writer.write_char(c)?,
        }
    }
    writer.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> String {
        let mut out = String::new();
        write_value(&mut Writer::new(&mut out), text).unwrap();
        out
    }

    /// An output the test can read while the sink writes to it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn write(sink: &LogSink, line: &str, buffered: bool) {
        LineWriter { sink, buffered }
            .write_all(line.as_bytes())
            .unwrap();
    }

    #[test]
    fn every_buffered_line_is_written_in_order_by_the_time_the_flush_guard_is_dropped() {
        let output = Captured::default();
        let (sink, flush) = LogSink::start(Box::new(output.clone()));
        let mut expected = String::new();
        for i in 0..1000 {
            let line = format!("line {i}\n");
            // Every tenth line is an operational one, written at once after the buffer.
            write(&sink, &line, i % 10 != 0);
            expected.push_str(&line);
        }
        drop(flush);
        assert_eq!(output.text(), expected);
        // After the guard, nothing waits in a buffer that no thread writes any more.
        write(&sink, "late\n", true);
        expected.push_str("late\n");
        assert_eq!(output.text(), expected);
    }

    #[test]
    fn an_operational_line_goes_out_at_once_after_the_buffered_access_lines() {
        let output = Captured::default();
        let (sink, _flush) = LogSink::start(Box::new(output.clone()));
        write(&sink, "access 1\n", true);
        write(&sink, "access 2\n", true);
        write(&sink, "warning\n", false);
        assert_eq!(output.text(), "access 1\naccess 2\nwarning\n");
    }

    #[test]
    fn buffered_lines_are_written_without_waiting_for_the_shutdown() {
        let output = Captured::default();
        let (sink, _flush) = LogSink::start(Box::new(output.clone()));
        write(&sink, "access\n", true);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while output.text().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(output.text(), "access\n");
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread_itself() {
        let output = Captured::default();
        // No writing thread: only the limit can get these lines out.
        let sink = LogSink::new(Box::new(output.clone()));
        let line = "x".repeat(MAX_BUFFERED_BYTES / 4 - 1) + "\n";
        for _ in 0..5 {
            write(&sink, &line, true);
        }
        assert_eq!(output.text(), line.repeat(5));
    }

    #[test]
    fn logfmt_values_are_quoted_only_when_needed_and_stay_on_one_line() {
        assert_eq!(value("/research/tasks/{id}"), "/research/tasks/{id}");
        assert_eq!(value("42"), "42");
        assert_eq!(value(""), r#""""#);
        assert_eq!(value("a b"), r#""a b""#);
        assert_eq!(value("k=v"), r#""k=v""#);
        assert_eq!(
            value("say \"hi\"\nback\\slash"),
            r#""say \"hi\"\nback\\slash""#
        );
    }
}
