//! The text log lines, written exactly as tracing-subscriber's own defaults
//! write them, with less work per line.
//!
//! A node logs every service call at its default level, so a line is
//! formatted for every message it takes in. The defaults put every field
//! through `fmt::Debug`, the level, spans and target through `write!`, and
//! the time through a dozen `write!`s; here a number is written by
//! [`itoa`], a plain string or a line's fixed parts are copied, and the
//! time's date and second are formatted once a second. Anything not plain
//! (text that needs escaping, colors) is handed to tracing-subscriber's
//! own visitor or format, so every line is the same, byte for byte, as the
//! default format writes it (tests below check both).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::callsite::{Callsite as _, DefaultCallsite};
use tracing::field::{Field, Visit};
use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// A text log line: time, level, the spans it is in, target and fields,
/// as tracing-subscriber's default (`Full`) format writes them, each part
/// written as it is rather than through `write!`. A line with colors, or
/// from a `log` record (its metadata is in fields), is left to the default.
#[derive(Debug, Clone)]
pub struct LogLine<T = LogTime> {
    timer: T,
    default: Format<Full, T>,
}

impl<T: FormatTime + Clone> LogLine<T> {
    pub fn new(timer: T) -> Self {
        Self {
            default: Format::default().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for LogLine<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if writer.has_ansi_escapes() || meta.fields().field("log.target").is_some() {
            return self.default.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(level_text(*meta.level()))?;
        if let Some(scope) = ctx.event_scope() {
            let mut any = false;
            for span in scope.from_root() {
                any = true;
                writer.write_str(span.metadata().name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if any {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// The fields of a text log line: `name=value`, separated by spaces, the
/// message first as written (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogFields;

impl<'writer> FormatFields<'writer> for LogFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = FieldsVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldsVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl FieldsVisitor<'_> {
    /// Whether the field is written here rather than by the default
    /// visitor: no colors, and a name written as it is.
    fn plain(&self, field: &Field) -> bool {
        self.result.is_ok() && !self.writer.has_ansi_escapes() && !field.name().starts_with("r#")
    }

    /// Fields a `log` record carries as metadata: the default leaves them
    /// out, and so does this.
    fn skipped(field: &Field) -> bool {
        field.name().starts_with("log.")
    }

    /// `name=`, after a space if a field came before.
    fn name(&mut self, field: &Field) {
        if !self.is_empty {
            self.result = self.writer.write_char(' ');
        }
        self.is_empty = false;
        if self.result.is_ok() && field.name() != "message" {
            self.result = self
                .writer
                .write_str(field.name())
                .and_then(|()| self.writer.write_char('='));
        }
    }

    fn write(&mut self, text: &str) {
        if self.result.is_ok() {
            self.result = self.writer.write_str(text);
        }
    }

    /// A number or bool: `name=text` when the field is plain, otherwise
    /// written by the default visitor.
    fn value(&mut self, field: &Field, text: &str, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if Self::skipped(field) {
            return;
        }
        if self.plain(field) && field.name() != "message" {
            self.name(field);
            self.write(text);
        } else {
            self.by_default(record);
        }
    }

    /// Writes one field with tracing-subscriber's own visitor.
    fn by_default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }
}

/// Text that the default writes as it is: as the message, nothing its ANSI
/// sanitizing would escape; as a field, nothing `str`'s `Debug` escapes.
/// Only printable ASCII is taken; anything else goes the default way.
fn plain_message(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn plain_quoted(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if Self::skipped(field) {
            return;
        }
        let message = field.name() == "message";
        if self.plain(field) && (message && plain_message(value) || !message && plain_quoted(value))
        {
            self.name(field);
            if message {
                self.write(value);
            } else {
                self.write("\"");
                self.write(value);
                self.write("\"");
            }
        } else {
            self.by_default(|v| v.record_str(field, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let mut digits = itoa::Buffer::new();
        self.value(field, digits.format(value), |v| v.record_u64(field, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let mut digits = itoa::Buffer::new();
        self.value(field, digits.format(value), |v| v.record_i64(field, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        let text = if value { "true" } else { "false" };
        self.value(field, text, |v| v.record_bool(field, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !Self::skipped(field) {
            self.by_default(|v| v.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if Self::skipped(field) {
            return;
        }
        if !self.plain(field) {
            return self.by_default(|v| v.record_debug(field, value));
        }
        if field.name() != "message" {
            // `name=` and the value's Debug, as the default writes it.
            self.name(field);
            if self.result.is_ok() {
                self.result = write!(self.writer, "{value:?}");
            }
            return;
        }
        // The message (a `format_args!`): written as it is unless the
        // default's sanitizing would escape something in it. Formatted
        // into a buffer kept per thread; should the buffer be in use (a
        // line within a line) or gone (the thread ending), into a new one.
        thread_local! {
            static MESSAGE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let mut written = |message: &mut String| {
            message.clear();
            let plain = write!(message, "{value:?}").is_ok() && plain_message(message);
            if plain {
                self.name(field);
                self.write(message);
            }
            plain
        };
        let plain = MESSAGE
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut message) => written(&mut message),
                Err(_) => written(&mut String::new()),
            })
            .unwrap_or_else(|_| written(&mut String::new()));
        if !plain {
            self.by_default(|v| v.record_debug(field, value));
        }
    }
}

/// Whether lines may be written by [`direct_line`]: set once the process
/// logs text without colors through [`crate::log_writer`].
static DIRECT: AtomicBool = AtomicBool::new(false);

/// Lets [`direct_line`] write lines from now on. For a process whose only
/// subscriber writes text without colors, formatted by [`LogLine`] and
/// [`LogFields`], to the log [`crate::log_writer::start`] began.
pub fn allow_direct_lines() {
    DIRECT.store(true, Ordering::Relaxed);
}

/// The fields of a line [`direct_line`] writes, each written as
/// [`LogFields`] writes that kind of field.
pub struct DirectFields<'a> {
    line: &'a mut String,
}

impl DirectFields<'_> {
    fn name(&mut self, name: &str) {
        self.line.push(' ');
        self.line.push_str(name);
        self.line.push('=');
    }

    /// A `&str` field (`name = value`): quoted, escaped as `str`'s `Debug`.
    pub fn quoted(&mut self, name: &str, value: &str) {
        self.name(name);
        if plain_quoted(value) {
            self.line.push('"');
            self.line.push_str(value);
            self.line.push('"');
        } else {
            let _ = write!(self.line, "{value:?}");
        }
    }

    /// A field written with `Display` (`name = %value`).
    pub fn display(&mut self, name: &str, value: &str) {
        self.name(name);
        self.line.push_str(value);
    }

    pub fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    pub fn boolean(&mut self, name: &str, value: bool) {
        self.name(name);
        self.line.push_str(if value { "true" } else { "false" });
    }
}

/// A whole line as [`LogLine`] and [`LogFields`] write an event of `level`
/// and `target`, outside any span, whose message is `message` (printable
/// ASCII) and whose fields `fields` writes.
fn format_direct(
    line: &mut String,
    timer: &impl FormatTime,
    level: Level,
    target: &str,
    message: &str,
    fields: impl FnOnce(&mut DirectFields<'_>),
) {
    debug_assert!(plain_message(message), "{message:?}");
    if timer.format_time(&mut Writer::new(line)).is_err() {
        line.push_str("<unknown time>");
    }
    line.push_str(level_text(level));
    line.push_str(target);
    line.push_str(": ");
    line.push_str(message);
    fields(&mut DirectFields { line });
    line.push('\n');
}

/// Writes a line of `level` and `target` (the module logging) straight to
/// the log, the same bytes [`LogLine`] would write for it, without tracing's
/// dispatch, filter and visitors: those cost more than the work a node
/// logs per message. The caller has checked the level is enabled for the
/// target ([`line_enabled`]). Returns false, having written nothing and
/// without calling `fields`, when the line must go through tracing:
/// [`allow_direct_lines`] was not called, no log was started, a span is
/// entered on this thread (its name and fields belong on the line), or this
/// thread is already writing a direct line.
pub fn direct_line(
    level: Level,
    target: &str,
    message: &str,
    fields: impl FnOnce(&mut DirectFields<'_>),
) -> bool {
    if !DIRECT.load(Ordering::Relaxed)
        || !crate::log_writer::started()
        || tracing::dispatcher::get_default(|d| d.current_span().id().is_some())
    {
        return false;
    }
    thread_local! {
        static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    }
    LINE.try_with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else {
            return false;
        };
        line.clear();
        format_direct(&mut line, &LogTime, level, target, message, fields);
        crate::log_writer::append_line(line.as_bytes())
    })
    .unwrap_or(false)
}

/// Whether an [`info_line!`] with `callsite` is written: what the subscriber
/// said of the callsite when it was registered (as for `tracing::info!`),
/// asking it again at each line only if its answer depends on more than
/// the callsite. (`tracing::enabled!` asks at every line; with the node's
/// filter of several targets, that cost more than the rest of the check.)
pub fn line_enabled(callsite: &'static DefaultCallsite) -> bool {
    if Level::INFO > STATIC_MAX_LEVEL || Level::INFO > LevelFilter::current() {
        return false;
    }
    let interest = callsite.interest();
    if interest.is_always() {
        return true;
    }
    if interest.is_never() {
        return false;
    }
    tracing::dispatcher::get_default(|d| d.enabled(callsite.metadata()))
}

/// An INFO line of the calling module: a message and fields, each field
/// named with how it is written (a method of [`DirectFields`]: `quoted`
/// for a `&str` as `name = value` logs it, `display` as `name = %value`,
/// `number`, `boolean`). Written by [`direct_line`] when it can, otherwise
/// by `tracing::info!`, with the same fields: the same line either way, and
/// the same record in any other format.
macro_rules! info_line {
    ($message:literal $(, $name:ident = $how:ident($value:expr))* $(,)?) => {
        if $crate::log_format::line_enabled($crate::log_format::line_callsite!()) {
            let direct = $crate::log_format::direct_line(
                ::tracing::Level::INFO,
                module_path!(),
                $message,
                |_line| { $( _line.$how(stringify!($name), $value); )* },
            );
            if !direct {
                ::tracing::info!(
                    $( $name = $crate::log_format::info_line!(@value $how $value), )*
                    $message
                );
            }
        }
    };
    (@value display $value:expr) => { ::tracing::field::display($value) };
    (@value $how:ident $value:expr) => { $value };
}
pub(crate) use info_line;

/// The callsite of an [`info_line!`]: an INFO hint of the calling module,
/// registered with tracing on its first use.
macro_rules! line_callsite {
    () => {{
        static CALLSITE: ::tracing::callsite::DefaultCallsite =
            ::tracing::callsite::DefaultCallsite::new(&META);
        static META: ::tracing::Metadata<'static> = ::tracing::Metadata::new(
            concat!("info_line ", file!(), ":", line!()),
            module_path!(),
            ::tracing::Level::INFO,
            ::core::option::Option::Some(file!()),
            ::core::option::Option::Some(line!()),
            ::core::option::Option::Some(module_path!()),
            ::tracing::field::FieldSet::new(&[], ::tracing_core::identify_callsite!(&CALLSITE)),
            ::tracing::metadata::Kind::HINT,
        );
        &CALLSITE
    }};
}
pub(crate) use line_callsite;

/// The time's space, then the level padded to five, then a space.
fn level_text(level: Level) -> &'static str {
    match level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    }
}

/// The time of a text log line, in UTC to the microsecond, as
/// tracing-subscriber's `SystemTime` writes it:
/// `2026-12-03T22:42:48.274603Z`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogTime;

impl FormatTime for LogTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        thread_local! {
            /// The second last written on this thread, and its text up to
            /// the `.`.
            static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
        }
        let second = since.as_secs();
        let cached = SECOND.try_with(|cell| {
            let (written, text) = &mut *cell.try_borrow_mut().ok()?;
            if *written != second {
                *written = second;
                text.clear();
                write_second(text, second);
            }
            Some(w.write_str(text))
        });
        match cached {
            Ok(Some(result)) => result?,
            // The thread is ending, or this is a line within a line.
            _ => {
                let mut text = String::new();
                write_second(&mut text, second);
                w.write_str(&text)?;
            }
        }
        write_micros(w, since.subsec_micros())
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` after the Unix epoch, in UTC.
fn write_second(out: &mut String, secs: u64) {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
}

/// Six digits of microseconds and the `Z`.
fn write_micros(w: &mut impl fmt::Write, micros: u32) -> fmt::Result {
    let mut digits = *b"000000Z";
    let mut rest = micros;
    for digit in digits[..6].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    w.write_str(std::str::from_utf8(&digits).expect("ASCII digits"))
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::{info, info_span, warn};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Every kind of field a node logs, plain and not.
    fn log_everything() {
        let span = info_span!("Relay", peer = "n2", generation = 7u64);
        let _entered = span.enter();
        let name = String::from("Alice");
        info!(participant = %name, lamport = 12u64, request_lamport = 3u64, duplicate = false, "Publish");
        info!(text = "say \"hi\"\\", count = -4i64, "quoted and escaped");
        info!(text = "naïve ✓", ok = true, "not ASCII");
        info!(text = "bell\x07 and esc\x1b[2J", "controls in a field");
        info!("a message with esc \x1b[2J and a tab\tinside");
        info!("a message in UTF-8: ø and a C1 \u{9b}");
        info!(r#type = "raw name", n = 1u64, "raw identifier");
        info!(
            error = &io::Error::other("disk full") as &(dyn std::error::Error + 'static),
            "an error value"
        );
        info!(what = ?Some(3), empty = "", "debug fields");
        warn!(most = u64::MAX, least = i64::MIN, "numbers at the edges");
        info!(message = 5u64, "message as a number");
        info!(plain = "no message at all");
        info!(n = 2u64, "formatted {} and {:?}", 5, "q");
        // A value whose Debug logs while it is written: the subscriber
        // drops that inner line, and the outer one is the same both ways.
        struct Loud;
        impl fmt::Debug for Loud {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                info!(depth = 2u64, "inside {}", "a line");
                f.write_str("loud")
            }
        }
        info!("outer {:?}", Loud);
        info!(value = ?Loud, "a loud field");
    }

    /// A timer that writes the same every time, so that two formats'
    /// lines can be compared whole.
    #[derive(Clone)]
    struct Fixed(Option<&'static str>);

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            match self.0 {
                Some(time) => w.write_str(time),
                None => Err(fmt::Error),
            }
        }
    }

    fn formatted(ansi: bool, ours: bool, time: Option<&'static str>) -> String {
        let lines = Lines::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_ansi(ansi)
            .with_max_level(tracing::Level::TRACE)
            .with_timer(Fixed(time));
        let everything = || {
            log_everything();
            let span = tracing::trace_span!("Outer");
            let _outer = span.enter();
            let span = tracing::debug_span!("Inner", empty = tracing::field::Empty);
            let _inner = span.enter();
            tracing::trace!("trace");
            tracing::debug!(n = 1u64, "debug");
            tracing::error!("error");
        };
        if ours {
            tracing::subscriber::with_default(
                builder
                    .fmt_fields(LogFields)
                    .event_format(LogLine::new(Fixed(time)))
                    .finish(),
                everything,
            );
        } else {
            tracing::subscriber::with_default(builder.finish(), everything);
        }
        lines.text()
    }

    #[test]
    fn lines_are_the_default_format_byte_for_byte() {
        for ansi in [false, true] {
            for time in [Some("2026-12-04T13:31:20.000001Z"), None] {
                let theirs = formatted(ansi, false, time);
                let ours = formatted(ansi, true, time);
                assert_eq!(ours.lines().count(), 18, "{ours}");
                for (ours, theirs) in ours.lines().zip(theirs.lines()) {
                    assert_eq!(ours, theirs, "ansi {ansi}");
                }
                assert_eq!(ours, theirs);
            }
        }
    }

    /// The lines a node writes with [`info_line!`], logged through tracing
    /// (`info_line!` falls back to it, as [`allow_direct_lines`] was not
    /// called here).
    fn node_lines(name: &str, origin: &str) {
        info_line!(
            "Broadcast",
            kind = quoted("EVENT_KIND_MESSAGE"),
            participant = display(name),
            lamport = number(51),
            origin = quoted(origin),
            seq = number(u64::MAX),
        );
        info_line!(
            "Publish",
            participant = display(name),
            lamport = number(0),
            request_lamport = number(51),
            duplicate = boolean(true),
        );
        info_line!("Publish", duplicate = boolean(false));
        info_line!("Nothing else");
    }

    fn node_lines_direct(timer: &impl FormatTime, name: &str, origin: &str) -> String {
        let target = module_path!();
        let mut out = String::new();
        let mut line = |message: &str, fields: &dyn Fn(&mut DirectFields<'_>)| {
            format_direct(&mut out, timer, Level::INFO, target, message, fields);
        };
        line("Broadcast", &|f| {
            f.quoted("kind", "EVENT_KIND_MESSAGE");
            f.display("participant", name);
            f.number("lamport", 51);
            f.quoted("origin", origin);
            f.number("seq", u64::MAX);
        });
        line("Publish", &|f| {
            f.display("participant", name);
            f.number("lamport", 0);
            f.number("request_lamport", 51);
            f.boolean("duplicate", true);
        });
        line("Publish", &|f| f.boolean("duplicate", false));
        line("Nothing else", &|_| {});
        out
    }

    #[test]
    fn a_direct_line_is_the_line_tracing_writes() {
        for time in [Some("2026-12-04T13:31:20.000001Z"), None] {
            for (name, origin) in [
                ("Ann", "0123456789abcdef"),
                ("Zoë \"the\" ✓", "quote \" and \\ and ✓ and \u{7}"),
                ("", ""),
            ] {
                let direct = node_lines_direct(&Fixed(time), name, origin);
                for ours in [false, true] {
                    let lines = Lines::default();
                    let builder = tracing_subscriber::fmt()
                        .with_writer(lines.clone())
                        .with_ansi(false)
                        .with_timer(Fixed(time));
                    let log = || node_lines(name, origin);
                    if ours {
                        let subscriber = builder
                            .fmt_fields(LogFields)
                            .event_format(LogLine::new(Fixed(time)))
                            .finish();
                        tracing::subscriber::with_default(subscriber, log);
                    } else {
                        tracing::subscriber::with_default(builder.finish(), log);
                    }
                    assert_eq!(direct, lines.text(), "ours {ours}");
                }
            }
        }
        // Not allowed here: nothing written, the fields never asked for.
        assert!(!direct_line(Level::INFO, "t", "m", |_| unreachable!()));
    }

    #[test]
    fn info_lines_follow_the_filter_of_their_module() {
        // (Lines go through tracing here, which filters them again: what
        // `line_enabled` says is checked on its own.)
        let enabled = |directives: &str| {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
                .finish();
            tracing::subscriber::with_default(subscriber, || line_enabled(line_callsite!()))
        };
        let here = module_path!();
        assert!(enabled("info"));
        assert!(!enabled("warn"));
        assert!(!enabled(&format!("info,{here}=warn")));
        assert!(enabled(&format!("warn,{here}=info")));
        assert!(enabled("h2=warn,tonic=warn,info"));
        // Again each way: what a callsite was told first does not stick.
        assert!(!enabled("warn"));
        assert!(enabled("info"));
    }

    fn time_text(timer: &impl FormatTime) -> String {
        let mut text = String::new();
        timer.format_time(&mut Writer::new(&mut text)).unwrap();
        text
    }

    #[test]
    fn the_time_is_written_as_the_default_writes_it() {
        // Retried until both were read within one second.
        for _ in 0..100 {
            let before = time_text(&tracing_subscriber::fmt::time::SystemTime);
            let ours = time_text(&LogTime);
            let after = time_text(&tracing_subscriber::fmt::time::SystemTime);
            if before[..20] != after[..20] {
                continue;
            }
            assert_eq!(ours.len(), before.len(), "{ours} against {before}");
            assert_eq!(ours[..20], before[..20]);
            assert!(before[20..26] <= ours[20..26] && ours[20..26] <= after[20..26]);
            assert!(ours.ends_with('Z'));
            return;
        }
        panic!("the clock never held still for a second");
    }

    #[test]
    fn dates_across_leap_years_and_centuries() {
        let cases = [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (951_868_799, "2000-02-29T23:59:59."),
            (1_709_164_800, "2024-02-29T00:00:00."),
            (4_107_542_399, "2100-02-28T23:59:59."),
            (4_107_542_400, "2100-03-01T00:00:00."),
            (253_402_300_799, "9999-12-31T23:59:59."),
        ];
        for (secs, text) in cases {
            let mut out = String::new();
            write_second(&mut out, secs);
            assert_eq!(out, text, "{secs}");
        }
        let mut micros = String::new();
        write_micros(&mut micros, 4_007).unwrap();
        assert_eq!(micros, "004007Z");
    }
}
