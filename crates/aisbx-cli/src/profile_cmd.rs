//! `aisbx profile list|show|detect|validate`: the profile catalog as a user sees it.
//! Every one is a request through the service's gate; this file only formats.

use std::path::{Path, PathBuf};

use aisbx_service::{Request, Response};
use clap::Subcommand;

use crate::{call, fail, open_service, print_json, unexpected};

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

/// A note on stderr when the project's profiles are not approved or unreadable.
fn note(n: &Option<String>) {
    if let Some(p) = n {
        eprintln!("aisbx: note: {p}");
    }
}

fn list(workdir: Option<&Path>, json: bool) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let request = Request::ProfileList {
        project: workdir.map(Path::to_path_buf),
    };
    let list = match call(&svc, request) {
        Ok(Response::ProfileList { list, note: n }) => {
            note(&n);
            list
        }
        Ok(other) => return unexpected(other),
        Err(e) => return fail(&e),
    };
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
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let request = Request::ProfileShow {
        name: name.to_string(),
        project: workdir.map(Path::to_path_buf),
    };
    let p = match call(&svc, request) {
        Ok(Response::ProfileShow(p)) => p,
        Ok(other) => return unexpected(other),
        Err(e) => return fail(&e),
    };
    note(&p.note);
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&p.json).unwrap_or_default()
        );
    } else if resolved {
        print!("{}", p.resolved);
    } else {
        outln!("# {} ({}, {})", p.name, p.source, p.file);
        print!("{}", p.text);
        if !p.text.ends_with('\n') {
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
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let request = Request::ProfileDetect {
        path: path.map(Path::to_path_buf),
        code: code.map(str::to_string),
        lang: lang.map(str::to_string),
        profile: profile_name.map(str::to_string),
        workdir: workdir.map(Path::to_path_buf),
    };
    let d = match call(&svc, request) {
        Ok(Response::ProfileDetect(d)) => d,
        Ok(other) => return unexpected(other),
        Err(e) => return fail(&e),
    };
    note(&d.note);
    if json {
        print_json(&d);
    } else {
        outln!("profile:   {} ({})", d.profile, d.source);
        outln!("language:  {}", d.language.as_deref().unwrap_or("-"));
        outln!("basis:     {}", d.basis);
        outln!("why:       {}", d.reason);
        match &d.missing {
            None => outln!("available: yes"),
            Some(m) => outln!("available: no ({m})"),
        }
    }
    0
}

fn validate(files: &[PathBuf], workdir: Option<&Path>) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let request = Request::ProfileValidate {
        files: files.to_vec(),
        workdir: workdir.map(Path::to_path_buf),
    };
    let checked = match call(&svc, request) {
        Ok(Response::ProfileValidate(v)) => v,
        Ok(other) => return unexpected(other),
        Err(e) => return fail(&e),
    };
    let mut failed = false;
    for f in checked {
        note(&f.note);
        if f.errors.is_empty() {
            let lang = match (&f.language, &f.missing) {
                (Some(l), None) => format!("; runs {l}"),
                (Some(l), Some(m)) => format!("; runs {l} (not available here: {m})"),
                (None, _) => String::new(),
            };
            outln!(
                "{}: ok (chain: {}{lang})",
                f.file.display(),
                f.chain.join(" → ")
            );
        } else {
            failed = true;
            outln!(
                "{}: {} error{}",
                f.file.display(),
                f.errors.len(),
                if f.errors.len() == 1 { "" } else { "s" }
            );
            for d in &f.errors {
                outln!("  {d}");
            }
        }
    }
    u8::from(failed)
}
