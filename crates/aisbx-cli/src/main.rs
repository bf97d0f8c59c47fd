//! `aisbx`: run untrusted code in a sandbox. A thin front end: it maps arguments to
//! service requests and formats results; everything else is the service's.

/// `println!` that ignores a closed stdout (`aisbx ... | head`) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// One value as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `1 file`, `2 files`, `1 directory`, `3 directories`.
pub(crate) fn counted(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

mod audit_cmd;
mod policy_cmd;
mod profile_cmd;
mod run_fast;
mod sandbox_cmd;
mod size;
mod snap_cmd;
mod tenant_cmd;
mod trust_cmd;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use aisbx_service::{
    CallIo, CancelToken, LimitOverrides, NoProgress, OutputSink, Program, ProjectProfiles, Request,
    RequestMeta, Response, RunRequest, Service, ServiceConfig, ServiceError,
};
use clap::{Args, Parser, Subcommand};

/// Exit status when aisbx itself failed or refused (SPEC).
const EXIT_AISBX: u8 = 125;

#[derive(Parser)]
#[command(
    name = "aisbx",
    version,
    about = "Run untrusted code in a sandbox: no access to your files, secrets, network or machine.",
    long_about = "Run untrusted code in a sandbox: no access to your files, secrets, network or machine.\n\n\
Every run gets fresh user, mount, pid, net, ipc, uts and cgroup namespaces, a read-only root with only the runtime, \
no capabilities, a seccomp filter, Landlock, and limits on time, memory, processes, CPU, disk and output.\n\n\
Examples:\n  aisbx run -- python3 -c 'print(1+1)'\n  aisbx run --lang node --code 'console.log(process.version)'\n  \
aisbx run script.py\n  aisbx run --workdir ./project --timeout 60 -- make test\n  aisbx doctor",
    after_help = "State lives in $AISBX_HOME (default ~/.local/share/aisbx, /var/lib/aisbx for root)."
)]
struct Cli {
    /// Policy directory deciding every request (default: $AISBX_POLICY, else
    /// /etc/aisbx/policy and $AISBX_HOME/policy, else the built-in policy that
    /// allows everything; see docs/POLICY.md).
    #[arg(long, global = true, value_name = "DIR")]
    policy: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

/// The `--policy` directory of this command line, for every service it opens.
static POLICY_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Cmd {
    /// Run a command, a piece of code, or a script file in a fresh sandbox.
    #[command(
        after_help = "Exit status: the program's own; 128+N when killed by signal N; 124 on timeout; \
125 when aisbx failed or refused; 126 not executable; 127 not found.\n\n\
Examples:\n  aisbx run -- ls -la /\n  aisbx run --lang python --code 'import sys; print(sys.version)'\n  \
aisbx run --json --memory 256M --timeout 5 -- sh -c 'echo hi'\n  echo data | aisbx run -- wc -c"
    )]
    Run(RunArgs),
    /// Report which isolation layers this host and user have.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List, show, detect and validate profiles (see docs/PROFILES.md).
    #[command(subcommand)]
    Profile(profile_cmd::ProfileCmd),
    /// Read and check the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Serve the MCP tools (the same as the aisbx-mcp binary).
    Mcp(aisbx_mcp::McpArgs),
    /// Create a persistent sandbox: empty, or copy-on-write from a snapshot.
    Create(sandbox_cmd::CreateArgs),
    /// Run a command in a persistent sandbox (exit status as for `run`).
    Exec(sandbox_cmd::ExecArgs),
    /// List persistent sandboxes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove persistent sandboxes and their files.
    Rm {
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
    /// Copy a file or tree between the host and a sandbox; NAME:path names a
    /// sandbox path (relative to /workspace). Symlinks are copied as links; out of
    /// a sandbox, one that points outside the copied tree is skipped with a warning.
    Cp {
        #[arg(value_name = "SRC")]
        src: String,
        #[arg(value_name = "DST")]
        dst: String,
        /// Also copy symlinks that point outside the copied tree (absolute, or `..`
        /// past its root) out of a sandbox.
        #[arg(long)]
        keep_links: bool,
    },
    /// Snapshots of sandboxes and directories: create, restore, list, diff, rm, verify.
    #[command(subcommand)]
    Snap(snap_cmd::SnapCmd),
    /// Approve a project's own profiles (.aisbx/profiles) after reviewing them;
    /// any later change to them withdraws the approval.
    Trust(trust_cmd::TrustArgs),
    /// Tenants of the HTTP MCP server and their bearer tokens: add, list, rm,
    /// rotate, revoke.
    #[command(subcommand)]
    Tenant(tenant_cmd::TenantCmd),
    /// Write, check, test and inspect the Rego policy that decides every request
    /// (see docs/POLICY.md).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
    /// Show your tenant's quotas: each one's use, limit and what is left.
    Quota {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Print the last entries of the audit log.
    Tail {
        /// How many entries.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain; names the first line that was edited, removed or reordered.
    Verify,
}

#[derive(Args, Debug, Default, PartialEq)]
struct RunArgs {
    /// Profile to run with (default: detected from --lang, the file, the workdir's
    /// project markers or the code, else `base`; the choice is noted on stderr).
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Host directory mounted read-write at /workspace (default: a fresh one, removed after).
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Wall-clock limit in seconds (default: the profile's; 30 in `base`).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Memory limit, e.g. 256M or 1G (default: the profile's; 512M in `base`).
    #[arg(long, value_name = "SIZE", value_parser = size::parse)]
    memory: Option<u64>,
    /// Process limit (default: the profile's; 256 in `base`).
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// CPU limit in cores, e.g. 0.5 (default: the profile's; 1 in `base`).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Set an environment variable in the sandbox (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Language of --code (python, node, bash, sh, perl, ruby, go, java, rust; see
    /// `aisbx profile list`); detected when absent.
    #[arg(long, value_name = "LANG", requires = "code")]
    lang: Option<String>,
    /// Source code to run (arguments for it may follow `--`).
    #[arg(long, value_name = "SOURCE", conflicts_with = "file")]
    code: Option<String>,
    /// Print one RunResult JSON object on stdout instead of streaming the output.
    #[arg(long)]
    json: bool,
    /// Show what the run would do (the policy's decision, the resolved profile
    /// and the limits) without running it; exit status 125 when it would be refused.
    #[arg(long)]
    dry_run: bool,
    /// Leave out the profiles of the project (.aisbx/profiles in the workdir or
    /// a parent), approved or not.
    #[arg(long)]
    ignore_project_profiles: bool,
    /// A script to run; its language comes from the extension or the #! line
    /// (arguments for it may follow `--`).
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// The command and its arguments, after `--`; with FILE or --code, the
    /// arguments passed to the script or code.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// `aisbx run ...`, the hot path: its common forms without clap ([`run_fast`]),
/// the rest against the `run` subcommand alone (building clap's whole command
/// tree, every subcommand and its arguments, is a quarter of a millisecond of a
/// run that takes a few). Both mean what the full parser means; anything else
/// (help, an error) returns `None` and goes through the full parser, so messages
/// stay the same.
fn parse_run_fast() -> Option<RunArgs> {
    use clap::FromArgMatches;
    let mut args = std::env::args_os().skip(1);
    let mut first = args.next()?;
    // `aisbx --policy DIR run ...`: the global option before the subcommand.
    let mut policy = None;
    if first == "--policy" {
        let dir = args.next()?;
        if dir.to_str().is_none_or(|d| d.starts_with('-')) {
            return None;
        }
        policy = Some(PathBuf::from(dir));
        first = args.next()?;
    } else if let Some(dir) = first.to_str().and_then(|a| a.strip_prefix("--policy=")) {
        policy = Some(PathBuf::from(dir));
        first = args.next()?;
    }
    if first != "run" {
        return None;
    }
    let rest: Vec<std::ffi::OsString> = args.collect();
    let parsed = run_fast::parse(&rest).or_else(|| {
        let cmd = RunArgs::augment_args(clap::Command::new("run").no_binary_name(true));
        let m = cmd.try_get_matches_from(rest).ok()?;
        RunArgs::from_arg_matches(&m).ok()
    })?;
    if let Some(p) = policy {
        let _ = POLICY_DIR.set(p);
    }
    Some(parsed)
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not K=V")),
    }
}

fn main() -> ExitCode {
    aisbx_service::maybe_run_helper();
    if let Some(a) = parse_run_fast() {
        return ExitCode::from(cmd_run(a));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_AISBX } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Some(p) = cli.policy {
        let _ = POLICY_DIR.set(p);
    }
    ExitCode::from(match cli.command {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Doctor { json } => cmd_doctor(json),
        Cmd::Profile(c) => profile_cmd::run(c),
        Cmd::Audit(a) => {
            let code = match a {
                AuditCmd::Tail { n, json } => audit_cmd::tail(n, json),
                AuditCmd::Verify => audit_cmd::verify(),
            };
            code.clamp(0, 255) as u8
        }
        Cmd::Mcp(mut args) => {
            if args.policy.is_none() {
                args.policy = POLICY_DIR.get().cloned();
            }
            aisbx_mcp::main_with_args(args).clamp(0, 255) as u8
        }
        Cmd::Create(a) => sandbox_cmd::create(a),
        Cmd::Exec(a) => sandbox_cmd::exec(a),
        Cmd::Ls { json } => sandbox_cmd::ls(json),
        Cmd::Rm { names } => sandbox_cmd::rm(names),
        Cmd::Cp {
            src,
            dst,
            keep_links,
        } => sandbox_cmd::cp(src, dst, keep_links),
        Cmd::Snap(c) => snap_cmd::run(c),
        Cmd::Trust(a) => trust_cmd::run(a),
        Cmd::Tenant(c) => tenant_cmd::run(c),
        Cmd::Policy(c) => policy_cmd::run(c, POLICY_DIR.get().cloned()),
        Cmd::Quota { json } => cmd_quota(json),
    })
}

fn cmd_quota(json: bool) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(code) => return code,
    };
    match call(&svc, Request::Quota) {
        Ok(Response::Quota(r)) => {
            if json {
                print_json(&r);
            } else {
                let show = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
                outln!("tenant {}", r.tenant);
                outln!(
                    "{:<22} {:>14} {:>14} {:>14}",
                    "QUOTA",
                    "USED",
                    "LIMIT",
                    "REMAINING"
                );
                for q in &r.quotas {
                    outln!(
                        "{:<22} {:>14} {:>14} {:>14}",
                        q.quota,
                        q.used,
                        show(q.limit),
                        show(q.remaining)
                    );
                }
            }
            0
        }
        Ok(other) => unexpected(other),
        Err(e) => fail(&e),
    }
}

fn fail(e: &ServiceError) -> u8 {
    // A refusal of several lines (a profile's problems) has the prefix on each.
    for line in e.to_string().lines() {
        eprintln!("aisbx: {line}");
    }
    match e {
        ServiceError::NotFound(_) => 127,
        _ => EXIT_AISBX,
    }
}

fn open_service() -> Result<Service, u8> {
    Service::open(ServiceConfig {
        policy: POLICY_DIR.get().cloned(),
        ..ServiceConfig::default()
    })
    .map_err(|e| fail(&e))
}

fn cli_meta(tool: &str) -> RequestMeta {
    RequestMeta {
        front_end: "cli".into(),
        client: std::env::var("USER").ok(),
        tool: tool.into(),
        tenant: cli_tenant(),
    }
}

/// One request through the service's gate (decided, carried out, audited),
/// with nothing streamed.
fn call(svc: &Service, request: Request) -> Result<Response, ServiceError> {
    svc.call_quiet(&cli_meta(request.tool()), request, &CancelToken::default())
}

/// As [`call`], with a snapshot's progress reported to `progress`.
fn call_progress(
    svc: &Service,
    request: Request,
    progress: &mut dyn aisbx_service::Progress,
) -> Result<Response, ServiceError> {
    svc.call(
        &cli_meta(request.tool()),
        request,
        CallIo {
            sink: &mut aisbx_service::NullSink,
            cancel: &CancelToken::default(),
            progress,
        },
    )
}

/// A response of another kind than the request's: a bug, said as one.
fn unexpected(r: Response) -> u8 {
    fail(&ServiceError::Internal(format!(
        "the service answered with an unexpected result: {r:?}"
    )))
}

/// The CLI user's tenant: the one `tenants.toml` maps the real uid to, else
/// `default`. A tenants file that cannot be read stops the command (exit 125):
/// guessing would put the user in another tenant's state.
fn cli_tenant() -> String {
    static TENANT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TENANT
        .get_or_init(|| {
            match aisbx_service::tenants::load(&aisbx_service::default_home()) {
                // No map: no need to ask who we are (one system call fewer per run).
                Ok(t) if t.uids.is_empty() => aisbx_service::tenants::DEFAULT_TENANT.to_string(),
                // SAFETY: getter.
                Ok(t) => t.tenant_of_uid(unsafe { libc::getuid() }),
                Err(e) => {
                    eprintln!("aisbx: {e}");
                    std::process::exit(EXIT_AISBX.into());
                }
            }
        })
        .clone()
}

/// Streams the program's output to ours as it comes (or, with `--json`, keeps it for
/// the result); aisbx's own notices go to stderr either way.
struct CliSink {
    live: bool,
}

impl OutputSink for CliSink {
    fn stdout(&mut self, data: &[u8]) {
        if self.live {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(data);
            let _ = o.flush();
        }
    }
    fn stderr(&mut self, data: &[u8]) {
        if self.live {
            let _ = std::io::stderr().lock().write_all(data);
        }
    }
    fn notice(&mut self, text: &str) {
        eprintln!("aisbx: {text}");
    }
}

/// The program of a `run` or `exec`: code (and its arguments), a script file (and its
/// arguments), or a command.
fn program_of(
    code: Option<String>,
    lang: Option<String>,
    file: Option<PathBuf>,
    words: Vec<String>,
) -> Option<(Program, Vec<String>)> {
    if let Some(code) = code {
        let language = lang.unwrap_or_default();
        Some((Program::Code { language, code }, words))
    } else if let Some(f) = file {
        Some((Program::File(f), words))
    } else if !words.is_empty() {
        Some((Program::Command(words), Vec::new()))
    } else {
        None
    }
}

fn cmd_run(a: RunArgs) -> u8 {
    let Some((program, args)) = program_of(a.code, a.lang, a.file, a.command) else {
        eprintln!(
            "aisbx: nothing to run: give a command after `--`, --lang with --code, or a FILE (see `aisbx run --help`)"
        );
        return EXIT_AISBX;
    };
    let mut req = RunRequest::new(program);
    req.args = args;
    req.profile = a.profile;
    req.workdir = a.workdir;
    req.env = a.env;
    req.limits = LimitOverrides {
        timeout_secs: a.timeout,
        memory_bytes: a.memory,
        pids: a.pids,
        cpus: a.cpus,
    };
    req.inherit_stdin = !std::io::stdin().is_terminal();
    // The user can approve the project's profiles, so unapproved ones are an error
    // to report rather than something to skip quietly.
    req.project_profiles = if a.ignore_project_profiles {
        ProjectProfiles::Ignore
    } else {
        ProjectProfiles::Require
    };
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    if a.dry_run {
        return dry_run(&svc, req, a.json);
    }
    run_and_report(&svc, req, a.json)
}

/// `aisbx run --dry-run`: the plan, as JSON or in lines.
fn dry_run(svc: &Service, req: RunRequest, json: bool) -> u8 {
    let plan = match call(svc, Request::Plan(req)) {
        Ok(Response::Plan(p)) => p,
        Ok(other) => return unexpected(other),
        Err(e) => return fail(&e),
    };
    if json {
        print_json(&plan);
    } else {
        match plan.decision.refusal() {
            None => outln!("decision: allowed"),
            Some(why) => outln!("decision: {why}"),
        }
        outln!("policy:   {} ({})", plan.policy, plan.decision.bundle);
        outln!("profile:  {}", plan.profile);
        let l = &plan.limits;
        outln!(
            "limits:   timeout {} s, memory {} bytes, pids {}, cpus {}",
            l.timeout_secs,
            l.memory_bytes,
            l.pids,
            l.cpus
        );
        outln!("command:  {}", plan.argv.join(" "));
        for n in &plan.notices {
            outln!("note:     {n}");
        }
    }
    if plan.allowed { 0 } else { EXIT_AISBX }
}

/// Run `req`, print the outcome (the live output already went out, or one RunResult
/// with `--json`) and return the exit status: the program's own, as SPEC says.
fn run_and_report(svc: &Service, req: RunRequest, json: bool) -> u8 {
    let result = svc.call(
        &cli_meta("run"),
        Request::Run(req),
        CallIo {
            sink: &mut CliSink { live: !json },
            cancel: &CancelToken::default(),
            progress: &mut NoProgress,
        },
    );
    match result {
        Ok(Response::Run(r)) => {
            if json {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                if r.timed_out {
                    eprintln!("aisbx: the run timed out and was killed");
                } else if r.oom_killed {
                    eprintln!("aisbx: the run reached its memory limit and was killed");
                }
                if r.stdout_truncated || r.stderr_truncated {
                    eprintln!("aisbx: output beyond the limit was dropped");
                }
                if !r.network_denied.is_empty() {
                    eprintln!(
                        "aisbx: the network refused {} (add them to the profile's [network] allow if they were meant)",
                        r.network_denied.join(", ")
                    );
                }
            }
            r.cli_exit_code().clamp(0, 255) as u8
        }
        Ok(other) => unexpected(other),
        Err(e) => fail(&e),
    }
}

fn cmd_doctor(json: bool) -> u8 {
    let svc = match open_service() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let d = match call(&svc, Request::Doctor) {
        Ok(Response::Doctor(d)) => d,
        Ok(other) => return unexpected(other),
        Err(e) => return fail(&e),
    };
    let report = &d.jail;
    let disk = &d.sandbox_disk.detail;
    if json {
        print_json(&d);
    } else {
        outln!(
            "aisbx doctor ({})",
            if report.running_as_root {
                "running as root"
            } else {
                "running as an unprivileged user"
            }
        );
        for l in &report.layers {
            let state = match l.state {
                aisbx_service::doctor::LayerState::Active => "active ",
                aisbx_service::doctor::LayerState::Missing => "MISSING",
            };
            let req = if l.required { "required" } else { "optional" };
            outln!("  {state}  {:<20} ({req})  {}", l.name, l.detail);
        }
        outln!(
            "  cgroup version: {}{}",
            report.cgroup_version,
            if report.cgroup_controllers.is_empty() {
                String::new()
            } else {
                format!(" ({})", report.cgroup_controllers.join(", "))
            }
        );
        outln!("  landlock ABI:   {}", report.landlock_abi);
        outln!("  sandbox disks:  {disk}");
        outln!(
            "  network:        {} (profiles with [network] mode = \"allowlist\")",
            d.filtered_network.detail
        );
        if report.ok() {
            outln!("All required layers are active.");
        } else {
            outln!("A required layer is missing: runs will be refused until it is fixed.");
        }
    }
    if report.ok() { 0 } else { 1 }
}
