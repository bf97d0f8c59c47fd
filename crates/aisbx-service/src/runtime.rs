//! Languages and the host runtimes that run them.
//!
//! What a language is (its interpreters, how code is fed to it, the files and project
//! markers that identify it) is data: the `[runtime]` section of a profile (see
//! `profiles/*.toml` and docs/PROFILES.md). This module turns that data into a run:
//! it finds the interpreter on the host (resolving pyenv shims and rustup proxies to
//! the real binary and its prefix), reports what is missing, and reads shebangs.

use std::path::{Path, PathBuf};

/// How code given to a run reaches the language's interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The code is written to `/run/aisbx/<file_name>` and the `run` template is
    /// executed (`{interpreter}` and `{file}` substituted).
    File,
    /// The profile runs commands only; `--code` and scripts are refused.
    None,
}

/// A language aisbx can run code in, as a profile's `[runtime]` section defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Language {
    pub name: String,
    /// Other names accepted for `--lang`.
    pub aliases: Vec<String>,
    /// Executables tried, in order, on the host PATH; also the names a shebang may use.
    pub interpreters: Vec<String>,
    /// Other executables the host must have (e.g. a linker for a compiler).
    pub requires: Vec<String>,
    pub feed: Feed,
    /// The file name the code gets inside the sandbox.
    pub file_name: String,
    /// The argv that runs a script file: `{interpreter}` and `{file}` are substituted.
    pub run: Vec<String>,
    /// The argv that runs code given inline (`--code`), when it differs from `run`
    /// (empty: `run`).
    pub run_code: Vec<String>,
    pub extensions: Vec<String>,
    /// Files whose presence in a project directory names this language.
    pub markers: Vec<String>,
    /// Substrings that, found in code, point to this language.
    pub hints: Vec<String>,
    /// Environment the language's runtime needs.
    pub env: Vec<(String, String)>,
}

impl Language {
    /// Whether `name` (case-insensitive) is this language or one of its aliases.
    pub fn is_called(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        self.name == n || self.aliases.contains(&n)
    }

    /// The argv that runs the script `file` (a path inside the sandbox).
    pub fn argv(&self, interpreter: &Path, file: &str) -> Vec<String> {
        fill(&self.run, interpreter, file)
    }

    /// The argv that runs code given inline, stored at `file` inside the sandbox.
    pub fn code_argv(&self, interpreter: &Path, file: &str) -> Vec<String> {
        let template = if self.run_code.is_empty() {
            &self.run
        } else {
            &self.run_code
        };
        fill(template, interpreter, file)
    }

    /// Whether a file with this extension (without the dot) is in this language.
    pub fn has_extension(&self, ext: &str) -> bool {
        let e = ext.to_ascii_lowercase();
        self.extensions.contains(&e)
    }

    /// Whether a shebang's program name (`python3.11`, `bash`, `node`) is this language's.
    pub fn runs_shebang(&self, prog: &str) -> bool {
        // python3.11 → python3 → python
        let trimmed = prog.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        [prog, trimmed]
            .iter()
            .any(|p| self.name == *p || self.interpreters.iter().any(|i| i == p))
    }
}

fn fill(template: &[String], interpreter: &Path, file: &str) -> Vec<String> {
    let interp = interpreter.to_string_lossy();
    template
        .iter()
        .map(|a| a.replace("{interpreter}", &interp).replace("{file}", file))
        .collect()
}

/// The program a shebang line names: `#!/usr/bin/env -S python3 -u` → `python3`.
pub fn shebang_program(content: &[u8]) -> Option<String> {
    let first = content.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    let mut words = line.split_whitespace();
    let mut prog = words.next()?;
    if prog.ends_with("/env") {
        prog = words.find(|w| !w.starts_with('-') && !w.contains('='))?;
    }
    Some(prog.rsplit('/').next()?.to_string())
}

/// A host runtime resolved for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// The interpreter's real path (the same path inside the sandbox).
    pub interpreter: PathBuf,
    /// A prefix outside the system directories that must be bound read-only
    /// (e.g. a pyenv install or a rustup toolchain), if any.
    pub prefix: Option<PathBuf>,
    /// The profile named the interpreter by an absolute path (rather than aisbx
    /// finding it on the host `PATH`): its prefix is a host path the profile
    /// names, and goes through the host-path check like a bind.
    pub named: bool,
}

/// Directories the sandbox always gets (bound read-only by the jail).
const SYSTEM_PREFIXES: &[&str] = &["/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/"];

/// Whether a path lies in the system directories every sandbox gets.
pub fn is_system(p: &Path) -> bool {
    let s = p.to_string_lossy();
    SYSTEM_PREFIXES.iter().any(|pre| s.starts_with(pre))
}

/// Find a language's interpreter on the host `PATH` (resolving pyenv shims and
/// rustup proxies to the real binary), and check its other requirements. The error
/// says what is missing.
pub fn resolve(lang: &Language, host_path: &str) -> Result<Runtime, String> {
    let rt = lang
        .interpreters
        .iter()
        .find_map(|bin| find_interpreter(bin, host_path))
        .ok_or_else(|| {
            format!(
                "{} is not installed on this host (looked for {} on PATH)",
                lang.name,
                lang.interpreters.join(", ")
            )
        })?;
    let missing: Vec<&str> = lang
        .requires
        .iter()
        .filter(|b| find_on_path(b, host_path).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} needs {} on this host's PATH, which is missing",
            lang.name,
            missing.join(", ")
        ));
    }
    Ok(rt)
}

fn find_on_path(bin: &str, host_path: &str) -> Option<PathBuf> {
    if bin.starts_with('/') {
        return is_executable(Path::new(bin)).then(|| PathBuf::from(bin));
    }
    host_path
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(bin))
        .find(|c| is_executable(c))
}

fn find_interpreter(bin: &str, host_path: &str) -> Option<Runtime> {
    let dirs: Vec<PathBuf> = if bin.starts_with('/') {
        vec![PathBuf::from(bin)]
    } else {
        host_path
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(bin))
            .collect()
    };
    for cand in dirs {
        if !is_executable(&cand) {
            continue;
        }
        let name = cand.file_name()?.to_string_lossy().into_owned();
        let real = if is_pyenv_shim(&cand) {
            match resolve_pyenv_shim(&cand, &name) {
                Some(r) => r,
                None => continue,
            }
        } else if is_rustup_proxy(&cand) {
            match resolve_rustup_proxy(&name) {
                Some(mut r) => {
                    r.named = bin.starts_with('/');
                    return Some(r);
                }
                None => continue,
            }
        } else {
            cand.clone()
        };
        let real = std::fs::canonicalize(&real).unwrap_or(real);
        let mut rt = runtime_for(real);
        rt.named = bin.starts_with('/');
        return Some(rt);
    }
    None
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
        named: false,
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

/// A rustup proxy is a link to (or copy of) the `rustup` binary under a tool's name.
fn is_rustup_proxy(p: &Path) -> bool {
    std::fs::canonicalize(p)
        .ok()
        .and_then(|r| r.file_name().map(|n| n == "rustup"))
        .unwrap_or(false)
        && p.file_name().is_some_and(|n| n != "rustup")
}

/// The toolchain in force: `RUSTUP_TOOLCHAIN`, else the `default_toolchain` of
/// `$RUSTUP_HOME/settings.toml` (`~/.rustup`); the tool is that toolchain's binary,
/// and the toolchain directory is the prefix to bind.
fn resolve_rustup_proxy(bin: &str) -> Option<Runtime> {
    let home = std::env::var_os("RUSTUP_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")))?;
    let toolchain = match std::env::var("RUSTUP_TOOLCHAIN") {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let settings = std::fs::read_to_string(home.join("settings.toml")).ok()?;
            let v: toml::Table = settings.parse().ok()?;
            v.get("default_toolchain")?.as_str()?.to_string()
        }
    };
    if toolchain.contains('/') {
        return None;
    }
    let dirs = home.join("toolchains");
    let exact = dirs.join(&toolchain);
    let dir = if exact.is_dir() {
        exact
    } else {
        // `stable` → `stable-x86_64-unknown-linux-gnu`
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dirs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{toolchain}-")))
            })
            .collect();
        found.sort();
        found.into_iter().next()?
    };
    let real = dir.join("bin").join(bin);
    if !is_executable(&real) {
        return None;
    }
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    Some(Runtime {
        interpreter: std::fs::canonicalize(&real).unwrap_or(real),
        prefix: Some(dir),
        named: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lang(name: &str, interpreters: &[&str]) -> Language {
        Language {
            name: name.into(),
            aliases: vec![],
            interpreters: interpreters.iter().map(|s| s.to_string()).collect(),
            requires: vec![],
            feed: Feed::File,
            file_name: "main".into(),
            run: vec!["{interpreter}".into(), "{file}".into()],
            run_code: Vec::new(),
            extensions: vec![],
            markers: vec![],
            hints: vec![],
            env: vec![],
        }
    }

    #[test]
    fn shebang_programs() {
        let cases: &[(&str, Option<&str>)] = &[
            ("#!/usr/bin/env python3\nprint(1)", Some("python3")),
            ("#!/usr/bin/python3.11 -u\n", Some("python3.11")),
            ("#!/bin/bash -e\n", Some("bash")),
            ("#!/usr/bin/env -S node --experimental\n", Some("node")),
            ("#!/usr/bin/env LANG=C perl\n", Some("perl")),
            ("print(1)\n", None),
            ("#!\n", None),
        ];
        for (src, want) in cases {
            assert_eq!(shebang_program(src.as_bytes()).as_deref(), *want, "{src:?}");
        }
        let py = lang("python", &["python3", "python"]);
        assert!(py.runs_shebang("python3.11"));
        assert!(py.runs_shebang("python"));
        assert!(!py.runs_shebang("perl"));
    }

    #[test]
    fn argv_template() {
        let mut l = lang("rust", &["rustc"]);
        l.run = vec![
            "/bin/sh".into(),
            "-c".into(),
            "\"$0\" -o /tmp/m \"$1\" && exec /tmp/m".into(),
            "{interpreter}".into(),
            "{file}".into(),
        ];
        let a = l.argv(Path::new("/opt/rustc"), "/run/aisbx/main.rs");
        assert_eq!(a[3], "/opt/rustc");
        assert_eq!(a[4], "/run/aisbx/main.rs");
    }

    fn exe(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn pyenv_shim_resolves_to_the_real_prefix() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join(".pyenv");
        let real = root.join("versions/3.99.1/bin");
        exe(&real.join("python3"));
        exe(&root.join("shims/python3"));
        std::fs::write(root.join("version"), "3.99.1\n").unwrap();
        // SAFETY: the test clears a variable no other test sets.
        unsafe { std::env::remove_var("PYENV_VERSION") };
        let py = lang("python", &["python3"]);
        let rt = resolve(&py, &format!("{}", root.join("shims").display())).unwrap();
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
    fn missing_runtime_and_missing_requirement_are_named() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().display().to_string();
        let e = resolve(&lang("perl", &["perl"]), &dir).unwrap_err();
        assert!(e.contains("perl is not installed"), "{e}");
        exe(&t.path().join("mycc"));
        let mut l = lang("mylang", &["mycc"]);
        l.requires = vec!["no-such-linker-xyz".into()];
        let e = resolve(&l, &dir).unwrap_err();
        assert!(e.contains("no-such-linker-xyz"), "{e}");
        l.requires = vec![];
        assert!(resolve(&l, &dir).is_ok());
    }
}
