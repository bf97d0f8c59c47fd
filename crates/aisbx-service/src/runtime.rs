//! Languages and the host runtimes that run them: which interpreter, how code is
//! fed to it, and which host paths it needs bound into the sandbox.

use std::path::{Path, PathBuf};

/// A language aisbx can run code in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Language {
    pub name: &'static str,
    /// Other names accepted for `--lang`.
    pub aliases: &'static [&'static str],
    /// Executables tried, in order, on the host PATH.
    pub binaries: &'static [&'static str],
    /// The file name the code gets inside the sandbox.
    pub file_name: &'static str,
    pub extensions: &'static [&'static str],
    /// Extra environment for this language.
    pub env: &'static [(&'static str, &'static str)],
}

pub const LANGUAGES: &[Language] = &[
    Language {
        name: "python",
        aliases: &["python3", "py"],
        binaries: &["python3", "python"],
        file_name: "main.py",
        extensions: &["py"],
        env: &[("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1")],
    },
    Language {
        name: "node",
        aliases: &["javascript", "js", "nodejs"],
        binaries: &["node", "nodejs"],
        file_name: "main.js",
        extensions: &["js", "mjs", "cjs"],
        env: &[],
    },
    Language {
        name: "bash",
        aliases: &[],
        binaries: &["bash"],
        file_name: "main.sh",
        extensions: &["bash"],
        env: &[],
    },
    Language {
        name: "sh",
        aliases: &["shell"],
        binaries: &["sh", "dash"],
        file_name: "main.sh",
        extensions: &["sh"],
        env: &[],
    },
    Language {
        name: "perl",
        aliases: &["pl"],
        binaries: &["perl"],
        file_name: "main.pl",
        extensions: &["pl", "pm"],
        env: &[],
    },
];

/// Find a language by name or alias (case-insensitive).
pub fn language(name: &str) -> Option<&'static Language> {
    let n = name.to_ascii_lowercase();
    LANGUAGES
        .iter()
        .find(|l| l.name == n || l.aliases.contains(&n.as_str()))
}

/// The language of a file, from its extension, else from its shebang line.
pub fn language_of_file(path: &Path, content: &[u8]) -> Option<&'static Language> {
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        let ext = ext.to_ascii_lowercase();
        if let Some(l) = LANGUAGES
            .iter()
            .find(|l| l.extensions.contains(&ext.as_str()))
        {
            return Some(l);
        }
    }
    language_of_shebang(content)
}

/// `#!/usr/bin/env python3`, `#!/bin/bash -e`, `#!/usr/bin/node` ...
pub fn language_of_shebang(content: &[u8]) -> Option<&'static Language> {
    let first = content.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    let mut words = line.split_whitespace();
    let mut prog = words.next()?;
    if prog.ends_with("/env") {
        prog = words.find(|w| !w.starts_with('-'))?;
    }
    let base = prog.rsplit('/').next()?;
    // python3.11 → python3
    let trimmed = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    LANGUAGES
        .iter()
        .find(|l| l.binaries.contains(&base) || l.binaries.contains(&trimmed) || l.name == trimmed)
}

/// A host runtime resolved for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// The interpreter's real path (the same path inside the sandbox).
    pub interpreter: PathBuf,
    /// A prefix outside the system directories that must be bound read-only
    /// (e.g. a pyenv install), if any.
    pub prefix: Option<PathBuf>,
}

/// Directories the sandbox always gets (bound read-only by the jail).
const SYSTEM_PREFIXES: &[&str] = &["/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/"];

fn is_system(p: &Path) -> bool {
    let s = p.to_string_lossy();
    SYSTEM_PREFIXES.iter().any(|pre| s.starts_with(pre))
}

/// Find a language's interpreter on the host `PATH`, resolving pyenv shims to the
/// real interpreter.
pub fn resolve(lang: &Language, host_path: &str) -> Result<Runtime, String> {
    for bin in lang.binaries {
        for dir in host_path.split(':').filter(|d| d.starts_with('/')) {
            let cand = Path::new(dir).join(bin);
            if !is_executable(&cand) {
                continue;
            }
            let real = if is_pyenv_shim(&cand) {
                match resolve_pyenv_shim(&cand, bin) {
                    Some(r) => r,
                    None => continue,
                }
            } else {
                cand.clone()
            };
            let real = std::fs::canonicalize(&real).unwrap_or(real);
            return Ok(runtime_for(real));
        }
    }
    Err(format!(
        "{} is not installed on this host (looked for {} on PATH)",
        lang.name,
        lang.binaries.join(", ")
    ))
}

fn runtime_for(real: PathBuf) -> Runtime {
    let prefix = if is_system(&real) {
        None
    } else {
        // <prefix>/bin/<interpreter>
        real.parent().and_then(Path::parent).map(Path::to_path_buf)
    };
    Runtime {
        interpreter: real,
        prefix,
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn is_pyenv_shim(p: &Path) -> bool {
    p.parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "shims")
        && p.parent()
            .and_then(Path::parent)
            .is_some_and(|r| r.join("versions").is_dir())
}

/// The pyenv version in force: `PYENV_VERSION`, a `.python-version` file from the
/// current directory up, else `$PYENV_ROOT/version`; then the first version in it
/// that has the binary.
fn resolve_pyenv_shim(shim: &Path, bin: &str) -> Option<PathBuf> {
    let root = shim.parent()?.parent()?;
    let mut spec = std::env::var("PYENV_VERSION").ok();
    if spec.is_none()
        && let Ok(mut dir) = std::env::current_dir()
    {
        loop {
            if let Ok(s) = std::fs::read_to_string(dir.join(".python-version")) {
                spec = Some(s);
                break;
            }
            if !dir.pop() {
                break;
            }
        }
    }
    let spec = spec.or_else(|| std::fs::read_to_string(root.join("version")).ok())?;
    for v in spec
        .split(|c: char| c.is_whitespace() || c == ':')
        .filter(|v| !v.is_empty())
    {
        if v == "system" {
            return None;
        }
        let cand = root.join("versions").join(v).join("bin").join(bin);
        if is_executable(&cand) {
            return Some(cand);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases() {
        assert_eq!(language("Python").map(|l| l.name), Some("python"));
        assert_eq!(language("js").map(|l| l.name), Some("node"));
        assert_eq!(language("cobol"), None);
    }

    #[test]
    fn shebangs() {
        let cases: &[(&str, Option<&str>)] = &[
            ("#!/usr/bin/env python3\nprint(1)", Some("python")),
            ("#!/usr/bin/python3.11 -u\n", Some("python")),
            ("#!/bin/bash -e\n", Some("bash")),
            ("#!/usr/bin/env -S node --experimental\n", Some("node")),
            ("#!/bin/sh\n", Some("sh")),
            ("#!/usr/bin/perl -w\n", Some("perl")),
            ("print(1)\n", None),
            ("#!/usr/bin/env ruby\n", None),
        ];
        for (src, want) in cases {
            assert_eq!(
                language_of_shebang(src.as_bytes()).map(|l| l.name),
                *want,
                "{src:?}"
            );
        }
    }

    #[test]
    fn extension_wins_over_shebang() {
        let l = language_of_file(Path::new("x.js"), b"#!/usr/bin/env python3\n");
        assert_eq!(l.map(|l| l.name), Some("node"));
        let l = language_of_file(Path::new("tool"), b"#!/usr/bin/env python3\n");
        assert_eq!(l.map(|l| l.name), Some("python"));
    }

    #[test]
    fn pyenv_shim_resolves_to_the_real_prefix() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join(".pyenv");
        let real = root.join("versions/3.99.1/bin");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(root.join("shims")).unwrap();
        for p in [real.join("python3"), root.join("shims/python3")] {
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(root.join("version"), "3.99.1\n").unwrap();
        // SAFETY: single-threaded test sets and clears the variable around the call.
        unsafe { std::env::remove_var("PYENV_VERSION") };
        let py = language("python").unwrap();
        let rt = resolve(py, &format!("{}", root.join("shims").display())).unwrap();
        assert_eq!(
            rt.interpreter,
            std::fs::canonicalize(real.join("python3")).unwrap()
        );
        assert_eq!(
            rt.prefix,
            Some(std::fs::canonicalize(root.join("versions/3.99.1")).unwrap())
        );
    }

    #[test]
    fn missing_runtime_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let e = resolve(language("perl").unwrap(), &t.path().display().to_string()).unwrap_err();
        assert!(e.contains("perl is not installed"), "{e}");
    }
}
