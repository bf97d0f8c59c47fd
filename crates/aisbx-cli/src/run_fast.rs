//! `aisbx run`'s arguments in their common forms, read without clap.
//!
//! A run takes a few milliseconds, and a tenth of one went to clap: building the
//! `run` command and its matcher touches a lot of code that a fresh process must
//! first fault in. The forms people and scripts actually write (long options with
//! a value, `-e K=V`, `--json`, one FILE, `--` and a command) are read here; for
//! anything else (a short option cluster, an option given twice, a value that
//! starts with `-`, `--help`, arguments that are not UTF-8, conflicting
//! arguments, anything unknown) this returns `None` and clap parses the whole
//! command line, so its errors and help stay the only ones. The tests hold this
//! to clap: it never accepts what clap rejects, and where it accepts it gives the
//! same `RunArgs` as clap.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::{RunArgs, parse_env, size};

/// Set an option that may be given once.
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

/// The arguments after `run`, or `None` when clap must decide.
pub(crate) fn parse(args: &[OsString]) -> Option<RunArgs> {
    let mut a = RunArgs::default();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_str()?;
        if arg == "--" {
            a.command = args[i + 1..]
                .iter()
                .map(|s| s.to_str().map(str::to_string))
                .collect::<Option<_>>()?;
            break;
        }
        let (name, inline) = if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            }
        } else if arg == "-e" {
            ("env", None)
        } else if arg.starts_with('-') || arg.is_empty() {
            // clap refuses an empty FILE.
            return None;
        } else {
            once(&mut a.file, PathBuf::from(arg))?;
            i += 1;
            continue;
        };
        if name == "json" || name == "ignore-project-profiles" {
            let flag = if name == "json" {
                &mut a.json
            } else {
                &mut a.ignore_project_profiles
            };
            if inline.is_some() || *flag {
                return None;
            }
            *flag = true;
            i += 1;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)?.to_str()?
            }
        };
        if value.starts_with('-') {
            return None;
        }
        match name {
            "profile" => once(&mut a.profile, value.to_string())?,
            "workdir" => once(&mut a.workdir, PathBuf::from(value))?,
            "timeout" => once(&mut a.timeout, value.parse().ok()?)?,
            "memory" => once(&mut a.memory, size::parse(value).ok()?)?,
            "pids" => once(&mut a.pids, value.parse().ok()?)?,
            "cpus" => once(&mut a.cpus, value.parse().ok()?)?,
            "env" => a.env.push(parse_env(value).ok()?),
            "lang" => once(&mut a.lang, value.to_string())?,
            "code" => once(&mut a.code, value.to_string())?,
            _ => return None,
        }
        i += 1;
    }
    // The relations clap enforces: --lang needs --code; --code and FILE exclude each
    // other (after `--` come a command, or the arguments of the code or FILE).
    if (a.lang.is_some() && a.code.is_none()) || (a.code.is_some() && a.file.is_some()) {
        return None;
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn clap_parse(args: &[OsString]) -> Result<RunArgs, clap::Error> {
        let cmd = RunArgs::augment_args(clap::Command::new("run").no_binary_name(true));
        let m = cmd.try_get_matches_from(args)?;
        RunArgs::from_arg_matches(&m)
    }

    /// What the fast path accepts, clap accepts too, with the same meaning.
    fn agrees(args: &[OsString]) -> bool {
        match parse(args) {
            None => true,
            Some(fast) => match clap_parse(args) {
                Ok(c) => {
                    assert_eq!(fast, c, "{args:?}");
                    true
                }
                Err(e) => panic!("fast path accepted {args:?}, clap refused: {e}"),
            },
        }
    }

    #[test]
    fn the_common_forms_take_the_fast_path_and_mean_what_clap_says() {
        for v in [
            &["--", "/usr/bin/true"][..],
            &["--lang", "python", "--code", "print(1+1)"],
            &["--lang=node", "--code=console.log(42)"],
            &["script.py"],
            &["--workdir", "./project", "--", "make", "test"],
            &[
                "--json",
                "--timeout",
                "5",
                "--memory",
                "256M",
                "--",
                "sh",
                "-c",
                "echo hi",
            ],
            &["-e", "A=1", "--env", "B=x=y", "--env=C=", "--", "env"],
            &[
                "--profile",
                "python-dev",
                "--pids",
                "40",
                "--cpus",
                "0.5",
                "tool.py",
            ],
            &["tool.py", "--json"],
            &["tool.py", "--", "a", "--b"],
            &["--lang", "python", "--code", "import sys", "--", "x"],
            &["--ignore-project-profiles", "--workdir", "w", "--", "make"],
            &["--code", ""],
            &["--"],
            &[],
        ] {
            let args = os(v);
            assert!(parse(&args).is_some(), "{v:?} should take the fast path");
            assert!(agrees(&args));
        }
        let a = parse(&os(&["--lang", "python", "--code", "pass", "--json"])).unwrap();
        assert_eq!(
            (a.lang.as_deref(), a.code.as_deref(), a.json),
            (Some("python"), Some("pass"), true)
        );
    }

    #[test]
    fn everything_else_goes_to_clap() {
        for v in [
            &["--help"][..],
            &["-h"],
            &["--lang", "python"],
            &["--code", "x", "file.py"],
            &["a.py", "b.py"],
            &["--profile", "a", "--profile", "b"],
            &["--json", "--json"],
            &["--json=true"],
            &["--ignore-project-profiles=yes", "--", "true"],
            &["--ignore-project-profiles", "--ignore-project-profiles"],
            &["--memory", "12XB", "--", "true"],
            &["--timeout", "soon", "--", "true"],
            &["--pids", "-1", "--", "true"],
            &["--env", "novalue", "--", "true"],
            &["-eA=1", "--", "true"],
            &["--timeout"],
            &["--code", "-1"],
            &["--unknown", "x"],
            &["--tim", "5", "--", "true"],
            &["-", "--", "true"],
            &[""],
        ] {
            let args = os(v);
            assert!(parse(&args).is_none(), "{v:?} should go to clap");
        }
        // Not UTF-8.
        use std::os::unix::ffi::OsStringExt;
        let bad = vec![OsString::from("--"), OsString::from_vec(vec![0xff])];
        assert!(parse(&bad).is_none());
    }

    #[test]
    fn never_accepts_what_clap_refuses() {
        // Every sequence of up to four tokens from a pool of tricky ones.
        let pool = [
            "--",
            "--json",
            "--lang",
            "python",
            "--code",
            "x",
            "-e",
            "A=1",
            "--env=B=2",
            "--memory",
            "1G",
            "--pids=3",
            "--timeout",
            "-1",
            "file.py",
            "--profile",
            "--help",
            "=",
            "",
        ];
        let n = pool.len();
        let mut checked = 0;
        for len in 0..=4u32 {
            for mut k in 0..n.pow(len) {
                let mut v = Vec::new();
                for _ in 0..len {
                    v.push(pool[k % n]);
                    k /= n;
                }
                assert!(agrees(&os(&v)));
                checked += 1;
            }
        }
        assert!(checked > 100_000);
    }
}
