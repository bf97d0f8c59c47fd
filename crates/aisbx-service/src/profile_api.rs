//! The profile catalog as a user reviews it (`aisbx profile show|detect|validate`):
//! the gate carries these out; the front end only formats their results.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::profile::{self, Catalog, DetectInput, Source};
use crate::{Service, ServiceError, runtime};

/// Largest script `detect` reads.
const MAX_SCRIPT_BYTES: u64 = 4 << 20;

/// One profile as `aisbx profile show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileShown {
    pub name: String,
    /// `builtin`, `user` or `project`.
    pub source: String,
    /// Its file.
    pub file: String,
    /// The text of its own file.
    pub text: String,
    /// The effective values, each with the layer it came from (`--resolved`).
    pub resolved: String,
    /// The same as JSON (`--json`).
    pub json: serde_json::Value,
    /// Why a project's profiles are left out or unreadable.
    pub note: Option<String>,
}

/// The profile a run would choose, and why (`aisbx profile detect`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileDetected {
    pub profile: String,
    pub language: Option<String>,
    /// What decided it (`profile`, `lang`, `extension`, ...).
    pub basis: String,
    pub reason: String,
    pub source: String,
    pub available: bool,
    /// The missing runtime, when not available.
    pub missing: Option<String>,
    #[serde(skip)]
    pub note: Option<String>,
}

/// One file checked by `aisbx profile validate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidatedFile {
    pub file: PathBuf,
    /// Every problem found; empty when the file is fine.
    pub errors: Vec<String>,
    /// Its `extends` chain, from the base (when fine).
    pub chain: Vec<String>,
    /// The language it runs, if any.
    pub language: Option<String>,
    /// Why that language's runtime is not available here.
    pub missing: Option<String>,
    /// Why a project's profiles are left out or unreadable.
    pub note: Option<String>,
}

impl Service {
    /// A profile: for review, a project's unapproved profiles are in the catalog.
    pub(crate) fn profile_show(
        &self,
        name: &str,
        project: Option<&Path>,
    ) -> Result<ProfileShown, ServiceError> {
        let c = self.profiles_for_review(project);
        let p = c.resolve(name).map_err(|e| {
            let lines: Vec<String> = e.diags.iter().map(ToString::to_string).collect();
            ServiceError::Refused(lines.join("\n"))
        })?;
        let text = c
            .files(&p.name)
            .last()
            .and_then(|f| f.layer().as_ref().ok())
            .map(|l| l.text.clone())
            .unwrap_or_default();
        Ok(ProfileShown {
            name: p.name.clone(),
            source: p.source.to_string(),
            file: p.file.to_string(),
            text,
            resolved: p.render_resolved(),
            json: p.to_json(),
            note: c.project_problem.clone(),
        })
    }

    /// As a run would choose: a project's unapproved profiles are left out.
    pub(crate) fn profile_detect(
        &self,
        path: Option<&Path>,
        code: Option<&str>,
        lang: Option<&str>,
        profile_name: Option<&str>,
        workdir: Option<&Path>,
    ) -> Result<ProfileDetected, ServiceError> {
        let c = self.profiles(workdir.or(path.filter(|p| p.is_dir())));
        let mut dir: Option<PathBuf> = workdir.map(Path::to_path_buf);
        let mut script: Option<(PathBuf, Vec<u8>)> = None;
        match path {
            Some(p) if p.is_dir() => dir = dir.or_else(|| Some(p.to_path_buf())),
            Some(p) => script = Some((p.to_path_buf(), read_script(p)?)),
            None if code.is_none() => dir = dir.or_else(|| std::env::current_dir().ok()),
            None => {}
        }
        let input = DetectInput {
            profile: profile_name,
            lang,
            file: script.as_ref().map(|(p, c)| (p.as_path(), c.as_slice())),
            code,
            dir: dir.as_deref(),
        };
        let d = c.detect(&input).map_err(|e| {
            let lines: Vec<String> = e.diags.iter().map(|d| d.message.clone()).collect();
            ServiceError::Refused(lines.join("\n"))
        })?;
        let missing = d
            .language
            .as_ref()
            .and_then(|l| runtime::resolve(l, &c.host_path).err());
        Ok(ProfileDetected {
            profile: d.profile.name.clone(),
            language: d.language.as_ref().map(|l| l.name.clone()),
            basis: d.basis.as_str().to_string(),
            reason: d.reason.clone(),
            source: d.profile.source.to_string(),
            available: missing.is_none(),
            missing,
            note: c.project_problem.clone(),
        })
    }

    /// Each file with its `extends` chain resolved against the catalog of its
    /// directory (or `workdir`), a project's own file also against what a
    /// project may not do even when approved.
    pub(crate) fn profile_validate(
        &self,
        files: &[PathBuf],
        workdir: Option<&Path>,
    ) -> Vec<ValidatedFile> {
        files
            .iter()
            .map(|f| {
                let start = workdir
                    .map(Path::to_path_buf)
                    .or_else(|| f.parent().map(Path::to_path_buf))
                    .filter(|p| !p.as_os_str().is_empty());
                let c: Catalog = self.profiles_for_review(start.as_deref());
                let source = match &c.user_dir {
                    Some(u) if f.parent().is_some_and(|d| same_dir(d, u)) => Source::User,
                    _ => Source::Project,
                };
                let entry = profile::load_file(f, source);
                let project_root = f
                    .parent()
                    .filter(|d| source == Source::Project && d.ends_with(".aisbx/profiles"))
                    .and_then(|d| std::fs::canonicalize(d).ok())
                    .and_then(|d| d.parent().and_then(Path::parent).map(Path::to_path_buf));
                let result = match entry.layer().clone() {
                    Err(diags) => Err(diags),
                    Ok(layer) => match project_root
                        .map(|r| profile::check_project_layer(&layer, &r))
                        .filter(|d| !d.is_empty())
                    {
                        Some(diags) => Err(diags),
                        None => c.resolve_layer(layer).map_err(|e| e.diags),
                    },
                };
                let mut v = ValidatedFile {
                    file: f.clone(),
                    errors: Vec::new(),
                    chain: Vec::new(),
                    language: None,
                    missing: None,
                    note: c.project_problem.clone(),
                };
                match result {
                    Ok(p) => {
                        v.chain = p.chain.iter().map(|l| l.label()).collect();
                        if let Some(l) = &p.language {
                            v.language = Some(l.name.clone());
                            v.missing = runtime::resolve(l, &c.host_path).err();
                        }
                    }
                    Err(diags) => v.errors = diags.iter().map(ToString::to_string).collect(),
                }
                v
            })
            .collect()
    }
}

fn read_script(p: &Path) -> Result<Vec<u8>, ServiceError> {
    let m = std::fs::metadata(p)
        .map_err(|e| ServiceError::invalid("path", format!("cannot read {}: {e}", p.display())))?;
    if m.len() > MAX_SCRIPT_BYTES {
        return Err(ServiceError::invalid(
            "path",
            format!(
                "{} is larger than the {} MiB limit",
                p.display(),
                MAX_SCRIPT_BYTES >> 20
            ),
        ));
    }
    std::fs::read(p)
        .map_err(|e| ServiceError::invalid("path", format!("cannot read {}: {e}", p.display())))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
