//! The log service shared by the `quickstart`, `log_service` and `log_client` examples
//! (E's log service), as a typed interface: the trait below is the contract both sides
//! compile against. `log(line)` stores a line with a timestamp (one-way: no answer);
//! `search(substring)` answers the matching `(time, line)` pairs; `topic(name)` answers
//! a new log of its own, which the caller can use before it arrives.
//!
//! `#[captp::interface]` generates `LogRef` (the client's typed reference) and
//! `LogServer<T>` (the object a vat exports); a binary that uses only one side of it
//! leaves the other unused, hence the `allow`.
#![allow(dead_code)]

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// An append-only log of timestamped lines.
#[captp::interface]
pub(crate) trait Log {
    /// Stores `line` with the time it arrived, in seconds since the Unix epoch.
    #[oneway]
    fn log(&self, line: &str);
    /// Every stored line that contains `needle`, oldest first, with its time.
    fn search(&self, needle: &str) -> Vec<(u64, String)>;
    /// A new, empty log for the topic `name`.
    fn topic(&self, name: &str) -> impl Log;
}

/// The log, in memory. With a `trace` name it also says on stderr what it is asked
/// (never the URI: that is the capability).
#[derive(Default)]
pub(crate) struct LogService {
    lines: Mutex<Vec<(u64, String)>>,
    trace: Option<&'static str>,
}

impl LogService {
    /// A log that reports each call on stderr, prefixed with `name`.
    pub(crate) fn traced(name: &'static str) -> LogService {
        LogService {
            trace: Some(name),
            ..LogService::default()
        }
    }

    fn trace(&self, call: std::fmt::Arguments<'_>) {
        if let Some(name) = self.trace {
            eprintln!("{name}: {call}");
        }
    }
}

impl Log for LogService {
    fn log(&self, line: &str) {
        self.trace(format_args!("log({line:?})"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.push((now, line.to_owned()));
    }

    fn search(&self, needle: &str) -> Vec<(u64, String)> {
        self.trace(format_args!("search({needle:?})"));
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .filter(|(_, line)| line.contains(needle))
            .cloned()
            .collect()
    }

    fn topic(&self, name: &str) -> LogRef {
        self.trace(format_args!("topic({name:?})"));
        LogRef::serve(LogService::default())
    }
}
