//! What `serve` logs, as `tracing` events on stderr: one access-log line per request (target
//! `taskstore::access`) and the operational messages (`taskstore::serve`, and
//! `taskstore::function` for what the function itself wrote), filtered by `RUST_LOG` and
//! written as logfmt or JSON lines.
//!
//! An access-log line holds the route template, never the path: a task id is the only key
//! to a task, so whoever reads the logs could otherwise read (or change) every task logged.
//! No header value, body or password is ever a field.

use std::fmt;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
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

/// Installs the process-wide subscriber for `serve`'s events: `format` lines on stderr,
/// filtered by `RUST_LOG` ([`DEFAULT_FILTER`] when unset or unreadable).
///
/// # Errors
/// A subscriber is already installed.
pub fn install(format: LogFormat) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
    installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
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
