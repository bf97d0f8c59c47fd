//! `aisbx snap ...`: snapshots of sandboxes and directories.

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::{counted, print_json};

use aisbx_service::{Progress, Request, Response, RestoreTarget, SnapSource};
use clap::{ArgGroup, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::{EXIT_AISBX, call, call_progress, fail, open_service, unexpected};

#[derive(Subcommand)]
pub enum SnapCmd {
    /// Snapshot a sandbox's files or a host directory.
    #[command(group(ArgGroup::new("source").required(true).args(["sandbox", "workdir"])))]
    Create {
        /// The snapshot's name.
        #[arg(value_name = "SNAP")]
        name: String,
        /// Snapshot this persistent sandbox.
        #[arg(long, value_name = "NAME")]
        sandbox: Option<String>,
        /// Snapshot this host directory.
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into a new host directory (a copy) or a new sandbox
    /// (copy-on-write: no file data is copied).
    #[command(group(ArgGroup::new("target").required(true).args(["sandbox", "workdir"])))]
    Restore {
        #[arg(value_name = "SNAP")]
        name: String,
        /// A new or empty host directory to copy the files into.
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        /// The name of a new sandbox over the snapshot.
        #[arg(long, value_name = "NEWNAME")]
        sandbox: Option<String>,
        /// Profile of the new sandbox (default: the snapshot's, else `base`); only with --sandbox.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List snapshots; a damaged one is marked DAMAGED with the reason (`damaged`
    /// in --json).
    List {
        /// Also show size, file count, source, profile, parent and bytes shared.
        #[arg(long)]
        show_metadata: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show what changed between two snapshots.
    Diff {
        #[arg(value_name = "A")]
        from: String,
        #[arg(value_name = "B")]
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots (damaged ones too), freeing the data no other snapshot uses.
    Rm {
        #[arg(value_name = "SNAP", required = true)]
        names: Vec<String>,
    },
    /// Check every snapshot against the content it names.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

/// A progress bar on stderr, only when both stdout and stderr are terminals.
struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    fn new(json: bool) -> Bar {
        let _ = json;
        Bar { bar: None }
    }
    fn enabled(json: bool) -> bool {
        !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
    }
}

impl Progress for Bar {
    fn start(&mut self, what: &str, total: u64) {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        self.bar = Some(bar);
    }
    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
    fn warn(&mut self, m: &str) {
        eprintln!("aisbx: warning: {m}");
    }
}

/// Warnings only (no bar).
struct Quiet;
impl Progress for Quiet {
    fn warn(&mut self, m: &str) {
        eprintln!("aisbx: warning: {m}");
    }
}

fn progress(json: bool) -> Box<dyn Progress> {
    if Bar::enabled(json) {
        Box::new(Bar::new(json))
    } else {
        Box::new(Quiet)
    }
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub fn run(cmd: SnapCmd) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    match cmd {
        SnapCmd::Create {
            name,
            sandbox,
            workdir,
            json,
        } => {
            let source = match (sandbox, workdir) {
                (Some(s), None) => SnapSource::Sandbox(s),
                (None, Some(d)) => SnapSource::Workdir(d),
                _ => {
                    eprintln!("aisbx: give exactly one of --sandbox and --workdir");
                    return EXIT_AISBX;
                }
            };
            let mut p = progress(json);
            let request = Request::SnapshotCreate { name, source };
            match call_progress(&svc, request, p.as_mut()) {
                Ok(Response::SnapshotCreate(info)) => {
                    if json {
                        print_json(&info);
                    } else {
                        outln!(
                            "snapshot {}: {}, {}, {}, {}",
                            info.name,
                            counted(info.files, "file", "files"),
                            counted(info.dirs, "directory", "directories"),
                            counted(info.symlinks, "symlink", "symlinks"),
                            human(info.bytes)
                        );
                    }
                    0
                }
                Ok(other) => unexpected(other),
                Err(e) => fail(&e),
            }
        }
        SnapCmd::Restore {
            name,
            workdir,
            sandbox,
            profile,
            json,
        } => {
            let target = match (workdir, sandbox) {
                (Some(d), None) => RestoreTarget::Workdir(d),
                (None, Some(s)) => RestoreTarget::Sandbox(s),
                _ => {
                    eprintln!("aisbx: give exactly one of --workdir and --sandbox");
                    return EXIT_AISBX;
                }
            };
            let mut p = progress(json);
            let request = Request::SnapshotRestore {
                name,
                target,
                profile,
            };
            match call_progress(&svc, request, p.as_mut()) {
                Ok(Response::SnapshotRestore(r)) => {
                    if json {
                        print_json(&r);
                    } else if let Some(sb) = &r.sandbox_id {
                        outln!(
                            "sandbox {sb} restored from {} ({}, copy-on-write) in {} ms",
                            r.snapshot,
                            counted(r.files, "file", "files"),
                            r.duration_ms
                        );
                    } else {
                        outln!(
                            "{} restored into {} ({}, {}) in {} ms",
                            r.snapshot,
                            r.workdir.as_deref().unwrap_or("?"),
                            counted(r.files, "file", "files"),
                            human(r.bytes),
                            r.duration_ms
                        );
                    }
                    0
                }
                Ok(other) => unexpected(other),
                Err(e) => fail(&e),
            }
        }
        SnapCmd::List {
            show_metadata,
            json,
        } => match call(
            &svc,
            Request::SnapshotList {
                with_sharing: show_metadata || json,
            },
        ) {
            Ok(Response::SnapshotList(l)) => {
                if json {
                    print_json(&l);
                } else if show_metadata {
                    outln!(
                        "{:<20} {:<21} {:>10} {:>7} {:>10} {:<10} {:<12} SOURCE",
                        "NAME",
                        "CREATED",
                        "SIZE",
                        "FILES",
                        "SHARED",
                        "PROFILE",
                        "PARENT"
                    );
                    for s in l.snapshots {
                        if let Some(why) = &s.damaged {
                            outln!("{:<20} {:<21} DAMAGED: {why}", s.name, s.created_at);
                            continue;
                        }
                        outln!(
                            "{:<20} {:<21} {:>10} {:>7} {:>10} {:<10} {:<12} {}",
                            s.name,
                            s.created_at,
                            human(s.bytes),
                            s.files,
                            human(s.shared_bytes.unwrap_or(0)),
                            s.profile.as_deref().unwrap_or("-"),
                            s.parent.as_deref().unwrap_or("-"),
                            s.source
                        );
                    }
                } else {
                    for s in l.snapshots {
                        match &s.damaged {
                            Some(why) => outln!("{} (DAMAGED: {why})", s.name),
                            None => outln!("{}", s.name),
                        }
                    }
                }
                0
            }
            Ok(other) => unexpected(other),
            Err(e) => fail(&e),
        },
        SnapCmd::Diff { from, to, json } => match call(&svc, Request::SnapshotDiff { from, to }) {
            Ok(Response::SnapshotDiff(d)) => {
                if json {
                    print_json(&d);
                } else {
                    for p in &d.added {
                        outln!("A {p}");
                    }
                    for p in &d.removed {
                        outln!("D {p}");
                    }
                    for p in &d.changed {
                        outln!("M {p}");
                    }
                    for f in &d.diffs {
                        print!("{}", f.unified);
                    }
                }
                0
            }
            Ok(other) => unexpected(other),
            Err(e) => fail(&e),
        },
        SnapCmd::Rm { names } => {
            let mut code = 0;
            for n in names {
                match call(&svc, Request::SnapshotDelete { name: n }) {
                    Ok(Response::SnapshotDelete(r)) => {
                        eprintln!(
                            "removed {}{}; freed {} objects ({})",
                            r.name,
                            if r.was_damaged.is_some() {
                                " (it was damaged)"
                            } else {
                                ""
                            },
                            r.freed_objects,
                            human(r.freed_bytes)
                        );
                        if let Some(kept) = &r.kept {
                            eprintln!("aisbx: note: {kept}");
                        }
                    }
                    Ok(other) => code = unexpected(other),
                    Err(e) => code = fail(&e),
                }
            }
            code
        }
        SnapCmd::Verify { json } => match call(&svc, Request::SnapshotVerify) {
            Ok(Response::SnapshotVerify(r)) => {
                if json {
                    print_json(&r);
                } else {
                    for p in &r.problems {
                        outln!("PROBLEM {p}");
                    }
                    outln!(
                        "{}: {} snapshots, {} objects ({}) checked, {} unreferenced",
                        if r.ok { "ok" } else { "FAILED" },
                        r.snapshots,
                        r.objects_checked,
                        human(r.bytes_checked),
                        r.unreferenced_objects
                    );
                }
                if r.ok { 0 } else { 1 }
            }
            Ok(other) => unexpected(other),
            Err(e) => fail(&e),
        },
    }
}
