//! Budgets for what a plugin sends back to the host: its log lines and its results.
//!
//! A plugin is untrusted code: a `log` call in a tight loop could fill a disk, and a giant
//! description would be copied and embedded. The deadline and the memory cap bound time and
//! guest memory; these budgets bound what crosses into the host's log and the chain. The caps
//! themselves are [`Budgets`], read from `[plugins.X.limits]` by `config`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Budgets;

/// Marker appended to a log message cut at the per-line cap.
pub(crate) const CUT_MARKER: &str = " … [cut by imbed: line over log_line_max_bytes]";

/// Lines and bytes counted against one cap pair.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    lines: u64,
    bytes: u64,
}

impl Tally {
    fn fits(&self, lines: u64, bytes: u64, len: u64) -> bool {
        self.lines < lines && self.bytes + len <= bytes
    }

    fn add(&mut self, len: u64) {
        self.lines += 1;
        self.bytes += len;
    }
}

struct Window {
    started: Instant,
    used: Tally,
}

/// What every instance of one plugin shares: the per-minute window and the count of lines
/// dropped so far (for `/metrics`).
pub(crate) struct PluginLogBudget {
    key: String,
    budgets: Budgets,
    window: Mutex<Window>,
    drops: DropCounts,
}

/// Dropped plugin log lines by plugin key, for `/metrics`. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct DropCounts(Arc<Mutex<BTreeMap<String, u64>>>);

impl DropCounts {
    fn add(&self, key: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(key.to_string()).or_default() += n;
    }

    /// Every plugin that dropped lines, with the count.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One call's log accounting, kept in the instance's store.
#[derive(Debug, Default)]
pub(crate) struct CallLog {
    used: Tally,
    dropped: u64,
}

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write it (possibly cut to the per-line cap, with the marker).
    Write(String),
    /// Past a budget: drop it.
    Drop,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn cut_at(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl PluginLogBudget {
    pub(crate) fn new(key: &str, budgets: Budgets, drops: DropCounts) -> Self {
        PluginLogBudget {
            key: key.to_string(),
            budgets,
            window: Mutex::new(Window {
                started: Instant::now(),
                used: Tally::default(),
            }),
            drops,
        }
    }

    /// Decide about one message of this call, at `now`.
    pub(crate) fn admit(&self, call: &mut CallLog, message: &str, now: Instant) -> Admit {
        let b = &self.budgets;
        let text = if message.len() > b.log_line_max_bytes {
            format!("{}{CUT_MARKER}", cut_at(message, b.log_line_max_bytes))
        } else {
            message.to_string()
        };
        let len = text.len() as u64;
        let fits_call = call
            .used
            .fits(u64::from(b.log_lines_per_call), b.log_bytes_per_call, len);
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(window.started) >= Duration::from_secs(60) {
            window.started = now;
            window.used = Tally::default();
        }
        let fits_window = window.used.fits(
            u64::from(b.log_lines_per_minute),
            b.log_bytes_per_minute,
            len,
        );
        if fits_call && fits_window {
            window.used.add(len);
            call.used.add(len);
            Admit::Write(text)
        } else {
            call.dropped += 1;
            Admit::Drop
        }
    }

    /// Close a call's accounting: counts its dropped lines for `/metrics` and returns the one
    /// summary line to log, if any were dropped.
    pub(crate) fn finish(&self, call: &mut CallLog) -> Option<String> {
        let call = std::mem::take(call);
        if call.dropped == 0 {
            return None;
        }
        self.drops.add(&self.key, call.dropped);
        let b = &self.budgets;
        Some(format!(
            "plugin {:?} dropped {} log line(s) past its log budget ({} lines / {} bytes per call, {} lines / {} bytes per minute; raise [plugins.{}.limits] log_lines_per_call and friends if it needs more)",
            self.key,
            call.dropped,
            b.log_lines_per_call,
            b.log_bytes_per_call,
            b.log_lines_per_minute,
            b.log_bytes_per_minute,
            self.key
        ))
    }
}

/// Check a description's text and structured fields against the output caps; the error names
/// the cap that was exceeded and the key that raises it.
pub(crate) fn check_description(
    key: &str,
    budgets: &Budgets,
    text_len: usize,
    fields: usize,
    longest_field: usize,
) -> Result<(), String> {
    if text_len > budgets.description_max_bytes {
        return Err(format!(
            "plugin {key:?} returned a description of {text_len} bytes, over its cap of {} bytes (description_max_bytes; raise [plugins.{key}.limits] description_max_bytes if that is intended)",
            budgets.description_max_bytes
        ));
    }
    if fields > budgets.structured_max_fields {
        return Err(format!(
            "plugin {key:?} returned {fields} structured fields, over its cap of {} (structured_max_fields; raise [plugins.{key}.limits] structured_max_fields if that is intended)",
            budgets.structured_max_fields
        ));
    }
    if longest_field > budgets.description_max_bytes {
        return Err(format!(
            "plugin {key:?} returned a structured field of {longest_field} bytes, over its cap of {} bytes (description_max_bytes)",
            budgets.description_max_bytes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Budgets {
        Budgets {
            log_lines_per_call: 3,
            log_bytes_per_call: 1000,
            log_lines_per_minute: 5,
            log_bytes_per_minute: 10_000,
            log_line_max_bytes: 10,
            description_max_bytes: 100,
            structured_max_fields: 4,
        }
    }

    #[test]
    fn lines_past_the_per_call_cap_are_dropped_and_summarised_once() {
        let drops = DropCounts::default();
        let b = PluginLogBudget::new("noisy", small(), drops.clone());
        let mut call = CallLog::default();
        let now = Instant::now();
        let written = (0..50)
            .filter(|_| matches!(b.admit(&mut call, "hi", now), Admit::Write(_)))
            .count();
        assert_eq!(written, 3);
        let summary = b.finish(&mut call).expect("a summary line");
        assert!(summary.contains("dropped 47 log line(s)"), "{summary}");
        assert!(summary.contains("\"noisy\""), "{summary}");
        assert_eq!(drops.snapshot().get("noisy"), Some(&47));
        // The next call starts with a fresh per-call budget and no summary of its own yet.
        assert_eq!(b.finish(&mut call), None);
        assert_eq!(b.admit(&mut call, "hi", now), Admit::Write("hi".into()));
    }

    #[test]
    fn the_per_minute_window_holds_across_calls_and_reopens() {
        let b = PluginLogBudget::new("p", small(), DropCounts::default());
        let now = Instant::now();
        let mut written = 0;
        for _ in 0..4 {
            let mut call = CallLog::default();
            for _ in 0..3 {
                if matches!(b.admit(&mut call, "x", now), Admit::Write(_)) {
                    written += 1;
                }
            }
        }
        assert_eq!(written, 5, "the window allows 5 lines a minute");
        let later = now + Duration::from_secs(61);
        let mut call = CallLog::default();
        assert!(matches!(b.admit(&mut call, "x", later), Admit::Write(_)));
    }

    #[test]
    fn bytes_count_too() {
        let mut budgets = small();
        budgets.log_bytes_per_call = 15;
        budgets.log_lines_per_call = 100;
        let b = PluginLogBudget::new("p", budgets, DropCounts::default());
        let mut call = CallLog::default();
        let now = Instant::now();
        assert!(matches!(
            b.admit(&mut call, "0123456789", now),
            Admit::Write(_)
        ));
        assert_eq!(b.admit(&mut call, "0123456789", now), Admit::Drop);
        assert!(matches!(b.admit(&mut call, "01234", now), Admit::Write(_)));
    }

    #[test]
    fn an_over_long_line_is_cut_on_a_char_boundary_with_the_marker() {
        let b = PluginLogBudget::new("p", small(), DropCounts::default());
        let mut call = CallLog::default();
        // 'é' is two bytes: byte 10 falls inside the fifth one.
        let Admit::Write(text) = b.admit(&mut call, &"é".repeat(100), Instant::now()) else {
            panic!("dropped")
        };
        assert_eq!(text, format!("{}{CUT_MARKER}", "é".repeat(5)));
        assert_eq!(cut_at("abc", 10), "abc");
        assert_eq!(cut_at("aé", 2), "a");
    }

    #[test]
    fn description_caps_name_the_cap() {
        let b = small();
        assert!(check_description("d", &b, 100, 4, 100).is_ok());
        let e = check_description("d", &b, 101, 0, 0).unwrap_err();
        assert!(e.contains("description_max_bytes"), "{e}");
        let e = check_description("d", &b, 10, 5, 0).unwrap_err();
        assert!(e.contains("structured_max_fields"), "{e}");
        let e = check_description("d", &b, 10, 1, 101).unwrap_err();
        assert!(e.contains("structured field of 101 bytes"), "{e}");
    }
}
