//! `aisbx profile list|show|detect|validate`: the profile catalog as a user sees it.
//! Everything is decided by the service's profile module; this file only formats.

use std::path::{Path, PathBuf};

use aisbx_service::profile::{self, Catalog, DetectInput, Source};
use aisbx_service::runtime;
use clap::Subcommand;

use crate::{cli_meta, fail, open_service};

/// Largest script `detect` reads.
const MAX_SCRIPT_BYTES: u64 = 4 << 20;

#[derive(Subcommand)]
pub enum ProfileCmd {
    /// List every profile with its source (builtin, user, project) and whether this
    /// host can run it.
    List {
        /// Find project profiles from this directory upward (default: the current one).
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a profile: its file, or with --resolved the effective values and the
    /// layer each came from.
    Show {
        /// The profile's name (see `aisbx profile list`).
        #[arg(value_name = "NAME")]
        name: String,
        /// Merge the `extends` chain and name the layer of every value.
        #[arg(long)]
        resolved: bool,
        /// Find project profiles from this directory upward (default: the current one).
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        /// Print the resolved profile as JSON (values with their layers).
        #[arg(long)]
        json: bool,
    },
    /// Print the profile `aisbx run` would choose, and why.
    #[command(
        after_help = "Order: --profile, --lang, the file's extension, its #! line, project marker files \
(pyproject.toml, package.json, go.mod, Cargo.toml, Gemfile, pom.xml, ...), then the code itself.\n\n\
Examples:\n  aisbx profile detect script.py\n  aisbx profile detect ./project\n  \
aisbx profile detect --code 'console.log(1)'"
    )]
    Detect {
        /// A script, or a project directory (default: the current directory).
        path: Option<PathBuf>,
        /// Source code, as for `aisbx run --code`.
        #[arg(long, value_name = "SOURCE")]
        code: Option<String>,
        /// Language, as for `aisbx run --lang`.
        #[arg(long, value_name = "LANG")]
        lang: Option<String>,
        /// Profile, as for `aisbx run --profile`.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// The run's workdir: its marker files count, and project profiles are found
        /// from it.
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check profile files and their `extends` chains; exits 1 listing every error.
    Validate {
        /// Profile files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Find project profiles from this directory upward (default: each file's
        /// directory).
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
    },
}

pub fn run(cmd: ProfileCmd) -> u8 {
    match cmd {
        ProfileCmd::List { workdir, json } => list(workdir.as_deref(), json),
        ProfileCmd::Show {
            name,
            resolved,
            workdir,
            json,
        } => show(&name, resolved, workdir.as_deref(), json),
        ProfileCmd::Detect {
            path,
            code,
            lang,
            profile,
            workdir,
            json,
        } => detect(
            path.as_deref(),
            code.as_deref(),
            lang.as_deref(),
            profile.as_deref(),
            workdir.as_deref(),
            json,
        ),
        ProfileCmd::Validate { files, workdir } => validate(&files, workdir.as_deref()),
    }
}

/// The catalog; a note on stderr when the project's profiles are not approved
/// or unreadable. For `review` (show, validate: nothing runs) unapproved ones
/// are in it; otherwise (detect, as a run would choose) they are not.
fn catalog(workdir: Option<&Path>, review: bool) -> Result<Catalog, u8> {
    let svc = open_service()?;
    let c = if review {
        svc.profiles_for_review(workdir)
    } else {
        svc.profiles(workdir)
    };
    if let Some(p) = &c.project_problem {
        eprintln!("aisbx: note: {p}");
    }
    Ok(c)
}

fn list(workdir: Option<&Path>, json: bool) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let list = match svc.profile_list_in(&cli_meta("profile_list"), workdir) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    if let Some(p) = &svc.profiles(workdir).project_problem {
        eprintln!("aisbx: note: {p}");
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return 0;
    }
    let w = list
        .profiles
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "{:<w$}  {:<8}  {:<8}  {:<9}  DESCRIPTION",
        "NAME",
        "LANGUAGE",
        "SOURCE",
        "AVAILABLE"
    );
    for p in &list.profiles {
        outln!(
            "{:<w$}  {:<8}  {:<8}  {:<9}  {}",
            p.name,
            p.language.as_deref().unwrap_or("-"),
            p.source,
            if p.available { "yes" } else { "no" },
            p.description
        );
        if let Some(m) = &p.missing {
            outln!("{:<w$}  └ {m}", "");
        }
    }
    0
}

fn show(name: &str, resolved: bool, workdir: Option<&Path>, json: bool) -> u8 {
    let c = match catalog(workdir, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let p = match c.resolve(name) {
        Ok(p) => p,
        Err(e) => {
            for d in &e.diags {
                eprintln!("aisbx: {d}");
            }
            return crate::EXIT_AISBX;
        }
    };
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&p.to_json()).unwrap_or_default()
        );
    } else if resolved {
        print!("{}", p.render_resolved());
    } else {
        let text = c
            .files(&p.name)
            .last()
            .and_then(|f| f.layer().as_ref().ok())
            .map(|l| l.text.clone())
            .unwrap_or_default();
        outln!("# {} ({}, {})", p.name, p.source, p.file);
        print!("{text}");
        if !text.ends_with('\n') {
            outln!();
        }
    }
    0
}

fn detect(
    path: Option<&Path>,
    code: Option<&str>,
    lang: Option<&str>,
    profile_name: Option<&str>,
    workdir: Option<&Path>,
    json: bool,
) -> u8 {
    let c = match catalog(workdir.or(path.filter(|p| p.is_dir())), false) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut dir: Option<PathBuf> = workdir.map(Path::to_path_buf);
    let mut script: Option<(PathBuf, Vec<u8>)> = None;
    match path {
        Some(p) if p.is_dir() => dir = dir.or_else(|| Some(p.to_path_buf())),
        Some(p) => match read_script(p) {
            Ok(content) => script = Some((p.to_path_buf(), content)),
            Err(e) => {
                eprintln!("aisbx: {e}");
                return crate::EXIT_AISBX;
            }
        },
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
    let d = match c.detect(&input) {
        Ok(d) => d,
        Err(e) => {
            for d in &e.diags {
                eprintln!("aisbx: {}", d.message);
            }
            return crate::EXIT_AISBX;
        }
    };
    let missing = d
        .language
        .as_ref()
        .and_then(|l| runtime::resolve(l, &c.host_path).err());
    if json {
        let v = serde_json::json!({
            "profile": d.profile.name,
            "language": d.language.as_ref().map(|l| l.name.clone()),
            "basis": d.basis.as_str(),
            "reason": d.reason,
            "source": d.profile.source.to_string(),
            "available": missing.is_none(),
            "missing": missing,
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        outln!("profile:   {} ({})", d.profile.name, d.profile.source);
        outln!(
            "language:  {}",
            d.language.as_ref().map_or("-", |l| l.name.as_str())
        );
        outln!("basis:     {}", d.basis.as_str());
        outln!("why:       {}", d.reason);
        match &missing {
            None => outln!("available: yes"),
            Some(m) => outln!("available: no ({m})"),
        }
    }
    0
}

fn read_script(p: &Path) -> Result<Vec<u8>, String> {
    let m = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if m.len() > MAX_SCRIPT_BYTES {
        return Err(format!(
            "{} is larger than the {} MiB limit",
            p.display(),
            MAX_SCRIPT_BYTES >> 20
        ));
    }
    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

fn validate(files: &[PathBuf], workdir: Option<&Path>) -> u8 {
    let mut failed = false;
    for f in files {
        let start = workdir
            .map(Path::to_path_buf)
            .or_else(|| f.parent().map(Path::to_path_buf))
            .filter(|p| !p.as_os_str().is_empty());
        let c = match catalog(start.as_deref(), true) {
            Ok(c) => c,
            Err(code) => return code,
        };
        let source = match &c.user_dir {
            Some(u) if f.parent().is_some_and(|d| same_dir(d, u)) => Source::User,
            _ => Source::Project,
        };
        let entry = profile::load_file(f, source);
        // A project's own file: what it may not do even when approved.
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
        match result {
            Ok(p) => {
                let chain: Vec<String> = p.chain.iter().map(|l| l.label()).collect();
                let lang = match &p.language {
                    Some(l) => match runtime::resolve(l, &c.host_path) {
                        Ok(_) => format!("; runs {}", l.name),
                        Err(m) => format!("; runs {} (not available here: {m})", l.name),
                    },
                    None => String::new(),
                };
                outln!("{}: ok (chain: {}{lang})", f.display(), chain.join(" → "));
            }
            Err(diags) => {
                failed = true;
                outln!(
                    "{}: {} error{}",
                    f.display(),
                    diags.len(),
                    if diags.len() == 1 { "" } else { "s" }
                );
                for d in diags {
                    outln!("  {d}");
                }
            }
        }
    }
    u8::from(failed)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
