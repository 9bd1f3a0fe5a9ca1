//! The log service shared by the `quickstart` and `log_service` examples (E's log
//! service): `log(line)` stores a line with a timestamp; `search(substring)` returns the
//! matching `[time, line]` pairs; `topic(name)` returns a new log object of its own.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use captp::{Args, Object, Reply};

/// An append-only log of timestamped lines.
#[derive(Default)]
pub(crate) struct LogService {
    lines: Mutex<Vec<(u64, String)>>,
}

impl Object for LogService {
    fn call(&self, method: &str, args: Args) -> Reply {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        match method {
            "log" => match args.decode::<(String,)>() {
                Ok((line,)) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    lines.push((now, line));
                    Reply::ok(())
                }
                Err(e) => Reply::err(e),
            },
            "search" => match args.decode::<(String,)>() {
                Ok((needle,)) => Reply::ok(
                    lines
                        .iter()
                        .filter(|(_, line)| line.contains(&needle))
                        .cloned()
                        .collect::<Vec<_>>(),
                ),
                Err(e) => Reply::err(e),
            },
            "topic" => Reply::object(LogService::default()),
            _ => Reply::unknown_method(method),
        }
    }
}
