//! `aisbx trust [DIR] | --revoke [DIR] | --list`: approve a project's own profiles.
//!
//! Code in a `--workdir` run can write `.aisbx/profiles/`, so aisbx uses a
//! project's profiles only once the user has approved their exact content; the
//! service keeps the approvals (`profile::trust`), this file only asks and prints.

use std::path::{Path, PathBuf};

use aisbx_service::profile::{self, Source, trust};
use clap::Args;

use crate::{EXIT_AISBX, open_service, print_json};

#[derive(Args)]
#[command(
    after_help = "A project's profiles are the files in .aisbx/profiles/ of DIR or its nearest parent \
that has one. `aisbx run` refuses to start while they are new or changed since they were approved \
(or run it with --ignore-project-profiles); MCP runs leave unapproved ones out.\n\n\
Examples:\n  aisbx trust              # the project of the current directory\n  \
aisbx trust ./project\n  aisbx trust --revoke ./project\n  aisbx trust --list"
)]
pub struct TrustArgs {
    /// The project directory, or a directory inside it (default: the current one).
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Withdraw the approval instead.
    #[arg(long, conflicts_with = "list")]
    pub revoke: bool,
    /// List the approved projects and whether their profiles are still as approved.
    #[arg(long, conflicts_with = "dir")]
    pub list: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TrustArgs) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let home = svc.home();
    if a.list {
        return list(home, a.json);
    }
    let start = match a.dir.clone().map(Ok).unwrap_or_else(std::env::current_dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("aisbx: cannot read the current directory: {e}");
            return EXIT_AISBX;
        }
    };
    let found = profile::project_profiles_dir(&start)
        .and_then(|d| d.parent().and_then(Path::parent).map(Path::to_path_buf));
    if a.revoke {
        // A project whose profiles are gone can still be revoked by its directory.
        let root = found.unwrap_or(start);
        return match trust::revoke(home, &root) {
            Ok(true) => {
                outln!("revoked: {}", root.display());
                0
            }
            Ok(false) => {
                eprintln!(
                    "aisbx: {} has no approved profiles (see `aisbx trust --list`)",
                    root.display()
                );
                EXIT_AISBX
            }
            Err(e) => {
                eprintln!(
                    "aisbx: cannot withdraw the approval of {}: {e}",
                    root.display()
                );
                EXIT_AISBX
            }
        };
    }
    let Some(root) = found else {
        eprintln!(
            "aisbx: no .aisbx/profiles directory in {} or its parents: there is nothing to trust",
            start.display()
        );
        return EXIT_AISBX;
    };
    let pf = match trust::read_project(&root) {
        Ok(pf) => pf,
        Err(e) => {
            eprintln!("aisbx: {e}; nothing was approved");
            return EXIT_AISBX;
        }
    };
    // What a project profile may not do even approved is reported now, not at
    // the first run.
    let mut problems = 0;
    for (name, bytes) in &pf.files {
        if !name.ends_with(".toml") {
            continue;
        }
        let entry = profile::load_bytes(&pf.dir.join(name), Source::Project, bytes);
        let diags = match entry.layer() {
            Ok(l) => profile::check_project_layer(l, &pf.root),
            Err(d) => d.clone(),
        };
        for d in diags {
            problems += 1;
            eprintln!("aisbx: warning: {d}");
        }
    }
    match trust::approve(home, &pf) {
        Ok(rec) => {
            if a.json {
                print_json(&rec);
            } else {
                let names: Vec<&str> = pf.files.iter().map(|f| f.0.as_str()).collect();
                outln!(
                    "trusted: {} ({} file{}: {}; sha256 {})",
                    pf.dir.display(),
                    names.len(),
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", "),
                    &rec.digest[..16]
                );
                if problems > 0 {
                    outln!(
                        "note: runs with the profiles above that have errors will be refused until they are fixed"
                    );
                }
            }
            0
        }
        Err(e) => {
            eprintln!(
                "aisbx: cannot record the approval in {}: {e}",
                home.join("trust").display()
            );
            EXIT_AISBX
        }
    }
}

fn list(home: &Path, json: bool) -> u8 {
    let rows: Vec<(trust::Record, &'static str)> = trust::list(home)
        .into_iter()
        .map(|r| {
            let state = match trust::read_project(&r.project) {
                Ok(pf) => match pf.status(home) {
                    trust::Status::Trusted => "trusted",
                    _ => "changed",
                },
                Err(_) => "unreadable",
            };
            (r, state)
        })
        .collect();
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, s)| {
                serde_json::json!({"project": r.project, "files": r.files.len(), "digest": r.digest, "state": s})
            })
            .collect();
        print_json(&v);
        return 0;
    }
    if rows.is_empty() {
        outln!("no approved projects");
        return 0;
    }
    outln!("{:<10}  {:>5}  PROJECT", "STATE", "FILES");
    for (r, s) in rows {
        outln!("{s:<10}  {:>5}  {}", r.files.len(), r.project.display());
    }
    0
}
