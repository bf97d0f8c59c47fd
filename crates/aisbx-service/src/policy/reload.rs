//! Reloading a running server's policy: the outcome of one attempt, and the record
//! of the last one that `aisbx policy status` shows.
//!
//! A reload replaces the active policy only as a whole and only with a bundle that
//! parses and whose `test_*` rules all pass; anything else leaves the active one in
//! place. The record lives in the state directory (`policy-reload.json`), written
//! to a temporary file and renamed, so a reader sees one whole record or the one
//! before.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{PolicyError, Sources, run_tests};

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Reload {
    /// The files are those of the active policy: nothing to do.
    Unchanged,
    /// The new bundle (its hash) decides requests from now on.
    Loaded { bundle: String },
    /// The new files were refused; `active` (a hash; `None` when no policy could
    /// ever be loaded) still decides.
    Rejected {
        bundle: Option<String>,
        error: String,
        active: Option<String>,
    },
}

/// The record of the last reload that changed something or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRecord {
    pub time: String,
    /// The server process that reloaded.
    pub pid: u32,
    #[serde(flatten)]
    pub reload: Reload,
}

/// Where the record is kept.
pub fn record_path(home: &Path) -> PathBuf {
    home.join(RECORD_FILE)
}

const RECORD_FILE: &str = "policy-reload.json";

/// Fails with the first failing test's name (and why) unless every `test_*` rule
/// of the bundle passes.
pub fn tests_pass(src: &Sources) -> Result<(), PolicyError> {
    let outcomes = run_tests(src)?;
    let failed: Vec<_> = outcomes.iter().filter(|t| !t.passed).collect();
    match failed.first() {
        None => Ok(()),
        Some(t) => Err(PolicyError(format!(
            "{} of its {} tests failed, first {} in {}{}",
            failed.len(),
            outcomes.len(),
            t.name,
            t.file,
            t.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ))),
    }
}

/// Writes the record of `reload` (nothing for [`Reload::Unchanged`]). Failing to
/// write it is logged, not fatal: the reload itself has happened or not.
pub fn record_reload(home: &Path, reload: &Reload) {
    if *reload == Reload::Unchanged {
        return;
    }
    let record = ReloadRecord {
        time: crate::audit::rfc3339_now(),
        pid: std::process::id(),
        reload: reload.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
    bytes.push(b'\n');
    if let Err(e) = crate::service::write_private_file(home, RECORD_FILE, &bytes) {
        tracing::warn!(
            "cannot record the policy reload in {}: {e}",
            record_path(home).display()
        );
    }
}

/// The last reload's record, when a server has written one.
pub fn last_reload(home: &Path) -> Option<ReloadRecord> {
    let text = std::fs::read(record_path(home)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_unchanged_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        record_reload(t.path(), &Reload::Unchanged);
        assert!(last_reload(t.path()).is_none());
        let r = Reload::Rejected {
            bundle: Some("b".into()),
            error: "x.rego:3: bad".into(),
            active: Some("a".into()),
        };
        record_reload(t.path(), &r);
        let back = last_reload(t.path()).unwrap();
        assert_eq!(back.reload, r);
        assert_eq!(back.pid, std::process::id());
        record_reload(t.path(), &Reload::Loaded { bundle: "c".into() });
        assert_eq!(
            last_reload(t.path()).unwrap().reload,
            Reload::Loaded { bundle: "c".into() }
        );
    }
}
