//! `aisbx create | exec | ls | rm | cp`: persistent sandboxes from the command line.

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::{counted, print_json};

use aisbx_service::{CopyEnd, LimitOverrides, Request, Response, RunRequest};
use clap::Args;

use super::{
    EXIT_AISBX, call, fail, open_service, parse_env, program_of, run_and_report, size, unexpected,
};

#[derive(Args)]
pub struct CreateArgs {
    /// The sandbox's name (default: a generated one).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Profile its runs use (default: the snapshot's, else `base`).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Start from this snapshot, copy-on-write (no file data is copied).
    #[arg(long = "from", value_name = "SNAPSHOT")]
    pub from: Option<String>,
    /// Print the sandbox as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    /// The sandbox to run in.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Wall-clock limit in seconds (default: the sandbox's profile's; 30 in `base`).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Memory limit, e.g. 256M or 1G (default: the sandbox's profile's; 512M in `base`).
    #[arg(long, value_name = "SIZE", value_parser = size::parse)]
    pub memory: Option<u64>,
    /// Process limit (default: the sandbox's profile's; 256 in `base`).
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// CPU limit in cores, e.g. 0.5 (default: the sandbox's profile's; 1 in `base`).
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Set an environment variable in the sandbox (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Language of --code (default: the sandbox's profile's, else detected).
    #[arg(long, value_name = "LANG", requires = "code")]
    pub lang: Option<String>,
    /// Source code to run in the sandbox's /workspace (arguments for it may follow `--`).
    #[arg(long, value_name = "SOURCE")]
    pub code: Option<String>,
    /// Print one RunResult JSON object on stdout instead of streaming the output.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments, after `--`; with --code, the code's arguments.
    #[arg(last = true, value_name = "COMMAND", required_unless_present = "code")]
    pub command: Vec<String>,
}

pub fn create(a: CreateArgs) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let request = Request::SandboxCreate {
        name: a.name,
        profile: a.profile,
        from_snapshot: a.from,
    };
    match call(&svc, request) {
        Ok(Response::SandboxCreate(sb)) => {
            if a.json {
                print_json(&sb);
            } else {
                match &sb.from_snapshot {
                    Some(s) => outln!(
                        "{} (profile {}, copy-on-write from snapshot {s})",
                        sb.id,
                        sb.profile
                    ),
                    None => outln!("{} (profile {})", sb.id, sb.profile),
                }
            }
            0
        }
        Ok(other) => unexpected(other),
        Err(e) => fail(&e),
    }
}

pub fn exec(a: ExecArgs) -> u8 {
    let Some((program, args)) = program_of(a.code, a.lang, None, a.command) else {
        eprintln!("aisbx: nothing to run: give a command after `--`, or --code");
        return EXIT_AISBX;
    };
    let mut req = RunRequest::new(program);
    req.args = args;
    req.sandbox_id = Some(a.name);
    req.env = a.env;
    req.limits = LimitOverrides {
        timeout_secs: a.timeout,
        memory_bytes: a.memory,
        pids: a.pids,
        cpus: a.cpus,
    };
    req.inherit_stdin = !std::io::stdin().is_terminal();
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    run_and_report(&svc, req, a.json)
}

pub fn ls(json: bool) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    match call(&svc, Request::SandboxList) {
        Ok(Response::SandboxList(l)) => {
            if json {
                print_json(&l);
            } else {
                outln!("{:<24} {:<10} {:<22} FROM", "NAME", "PROFILE", "CREATED");
                for s in l.sandboxes {
                    outln!(
                        "{:<24} {:<10} {:<22} {}",
                        s.id,
                        s.profile,
                        s.created_at,
                        s.from_snapshot.as_deref().unwrap_or("-")
                    );
                }
            }
            0
        }
        Ok(other) => unexpected(other),
        Err(e) => fail(&e),
    }
}

pub fn rm(names: Vec<String>) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let mut code = 0;
    for n in names {
        match call(&svc, Request::SandboxDestroy { id: n }) {
            Ok(Response::SandboxDestroy(_)) => {}
            Ok(other) => code = unexpected(other),
            Err(e) => code = fail(&e),
        }
    }
    code
}

/// `NAME:path` is a sandbox path; anything with a `/` before the first `:` (or no
/// `:`) is a host path. `./a:b` names a host file with a colon.
fn parse_end(s: &str) -> CopyEnd {
    if let Some((name, path)) = s.split_once(':')
        && !name.is_empty()
        && !name.contains('/')
    {
        return CopyEnd::Sandbox {
            id: name.to_string(),
            path: path.to_string(),
        };
    }
    CopyEnd::Host(PathBuf::from(s))
}

pub fn cp(src: String, dst: String, keep_links: bool) -> u8 {
    let (s, d) = (parse_end(&src), parse_end(&dst));
    if matches!(
        (&s, &d),
        (CopyEnd::Host(_), CopyEnd::Host(_)) | (CopyEnd::Sandbox { .. }, CopyEnd::Sandbox { .. })
    ) {
        eprintln!(
            "aisbx: one side of `aisbx cp` must be a sandbox path (NAME:path) and the other a host path"
        );
        return EXIT_AISBX;
    }
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let request = Request::Copy {
        src: s,
        dst: d,
        keep_links,
    };
    match call(&svc, request) {
        Ok(Response::Copy(r)) => {
            for w in &r.warnings {
                eprintln!("aisbx: warning: {w}");
            }
            eprintln!(
                "copied {}, {}, {} ({})",
                counted(r.files, "file", "files"),
                counted(r.dirs, "directory", "directories"),
                counted(r.symlinks, "symlink", "symlinks"),
                counted(r.bytes, "byte", "bytes")
            );
            0
        }
        Ok(other) => unexpected(other),
        Err(e) => fail(&e),
    }
}
