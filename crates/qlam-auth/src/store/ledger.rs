//! The M2M monthly ledger beside the store (`<store file>.m2m-ledger.json`): mints per
//! calendar month in UTC. Updated only under the store's shared lock, by atomic rewrite, so
//! concurrent writers cannot lose counts and a crash leaves the old or the new count. A mint
//! is counted before its request is sent and released only when the IdP definitely issued
//! nothing, so a crash can over-count by one but never under-count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::format::from_unix;
use crate::store::fsutil;

/// The ledger file's content.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ledger {
    /// Mints per month, keyed `YYYY-MM` (UTC).
    pub months: BTreeMap<String, u64>,
}

/// The month key for a unix time.
pub fn month_key(unix: f64) -> String {
    let t: chrono::DateTime<Utc> = from_unix(unix);
    format!("{:04}-{:02}", t.year(), t.month())
}

/// Where the ledger of a store file lives.
pub fn ledger_path(store_file: &Path) -> PathBuf {
    let mut p = store_file.as_os_str().to_owned();
    p.push(".m2m-ledger.json");
    PathBuf::from(p)
}

impl Ledger {
    /// Read the ledger (missing = empty). A corrupt ledger is an error: guessing zero could
    /// blow through the budget.
    pub fn read(path: &Path) -> Result<Ledger> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::store(format!("the M2M ledger {} is corrupt: {e}", path.display()))
                    .with_hint("fix or remove it (removing it resets this month's count)")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(Error::store(format!(
                "cannot read the M2M ledger {}: {e}",
                path.display()
            ))),
        }
    }

    /// Mints in the month of `unix`.
    pub fn count(&self, unix: f64) -> u64 {
        self.months.get(&month_key(unix)).copied().unwrap_or(0)
    }

    /// Add `delta` (may be negative) to the month of `unix` and write atomically. Call with
    /// the store lock held.
    pub fn add(path: &Path, unix: f64, delta: i64) -> Result<u64> {
        let mut ledger = Ledger::read(path)?;
        let entry = ledger.months.entry(month_key(unix)).or_insert(0);
        *entry = (*entry as i64 + delta).max(0) as u64;
        let value = *entry;
        // Keep a year of history.
        while ledger.months.len() > 12 {
            let first = ledger.months.keys().next().cloned().unwrap_or_default();
            ledger.months.remove(&first);
        }
        let mut bytes = serde_json::to_vec_pretty(&ledger).unwrap_or_default();
        bytes.push(b'\n');
        fsutil::write_atomic(path, &bytes, 0o600, true)?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_utc() {
        // 2026-11-30T23:59:59Z and 2026-12-01T00:00:00Z
        assert_eq!(month_key(1_796_083_199.0), "2026-11");
        assert_eq!(month_key(1_796_083_200.0), "2026-12");
    }

    #[test]
    fn add_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.json");
        assert_eq!(Ledger::add(&p, 1_796_083_199.0, 1).unwrap(), 1);
        assert_eq!(Ledger::add(&p, 1_796_083_199.0, 1).unwrap(), 2);
        assert_eq!(Ledger::add(&p, 1_796_083_200.0, 1).unwrap(), 1);
        assert_eq!(Ledger::add(&p, 1_796_083_200.0, -1).unwrap(), 0);
        let l = Ledger::read(&p).unwrap();
        assert_eq!(l.count(1_796_083_199.0), 2);
        assert_eq!(l.count(1_796_083_200.0), 0);
    }
}
