//! The `errors` directive: a line on stdout for each query a plugin failed
//! (`[ERROR] plugin/errors: RCODE NAME TYPE: ERROR`), and `consolidate DURATION REGEXP [LEVEL]
//! [show_first]`, which folds the errors matching a pattern into one line per period
//! (`N errors like 'REGEXP' occurred in last DURATION`) at the level asked for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A level of CoreDNS's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Info,
    /// Written only with CoreDNS's `debug` plugin, which svcplane does not have: never.
    Debug,
}

impl Level {
    fn prefix(self) -> Option<&'static str> {
        match self {
            Level::Error => Some("[ERROR]"),
            Level::Warning => Some("[WARNING]"),
            Level::Info => Some("[INFO]"),
            Level::Debug => None,
        }
    }
}

/// One `consolidate` rule.
#[derive(Debug)]
pub struct Consolidate {
    pub period: Duration,
    pub pattern: regex::Regex,
    pub level: Level,
    /// Write the first error of a period as it comes, the summary only if more followed.
    pub show_first: bool,
    count: AtomicU32,
}

impl Consolidate {
    pub fn new(period: Duration, pattern: regex::Regex, level: Level, show_first: bool) -> Self {
        Consolidate {
            period,
            pattern,
            level,
            show_first,
            count: AtomicU32::new(0),
        }
    }
}

impl PartialEq for Consolidate {
    fn eq(&self, other: &Self) -> bool {
        self.period == other.period
            && self.pattern.as_str() == other.pattern.as_str()
            && self.level == other.level
            && self.show_first == other.show_first
    }
}

impl Eq for Consolidate {}

/// What `errors` writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorLog {
    pub consolidate: Vec<Arc<Consolidate>>,
}

impl ErrorLog {
    /// Reports that a plugin answered `name` `qtype` with `rcode` because of `error`.
    pub fn report(&self, rcode: u16, name: &str, qtype: &str, error: &str) {
        let mut level = Level::Error;
        for rule in &self.consolidate {
            if !rule.pattern.is_match(error) {
                continue;
            }
            let seen = rule.count.fetch_add(1, Ordering::AcqRel) + 1;
            if seen == 1 {
                // The period starts with its first error; its summary comes at its end.
                let period = rule.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(period.period).await;
                    let count = period.count.swap(0, Ordering::AcqRel);
                    if count > 1 || (count == 1 && !period.show_first) {
                        write(
                            period.level,
                            &format!(
                                "{count} errors like '{}' occurred in last {}",
                                period.pattern.as_str(),
                                go_duration(period.period)
                            ),
                        );
                    }
                });
                if !rule.show_first {
                    return;
                }
            } else {
                return;
            }
            level = rule.level;
            break;
        }
        write(level, &format!("{rcode} {name} {qtype}: {error}"));
    }
}

fn write(level: Level, text: &str) {
    if let Some(prefix) = level.prefix() {
        println!("{prefix} plugin/errors: {text}");
    }
}

/// A duration as Go prints one (`5s`, `1m0s`, `500ms`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s) = (
        ms / 3_600_000,
        ms / 60_000 % 60,
        (ms % 60_000) as f64 / 1000.0,
    );
    let secs = if s.fract() == 0.0 {
        format!("{}s", s as u64)
    } else {
        format!("{s}s")
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
    }
}
