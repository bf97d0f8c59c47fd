use super::*;

fn input(tenant: &str, transport: &str, network: &str) -> serde_json::Value {
    serde_json::json!({
        "tool": "run",
        "caller": {"tenant": tenant, "transport": transport, "client": null},
        "request": {"language": "python", "code": "print(1)", "code_bytes": 8,
                    "command": null, "files": [], "limits": {}, "workdir": false},
        "profile": {"name": "python", "seccomp": "default", "network": network,
                    "limits": {"timeout_secs": 30.0, "memory_bytes": 536870912u64, "pids": 256, "cpus": 1.0}},
    })
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        let p = d.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }
    d
}

fn bundle_of(files: &[(&str, &str)]) -> Bundle {
    let d = dir_with(files);
    Bundle::parse(&Sources::from_dir(d.path()).expect("sources"), false).expect("parse")
}

#[test]
fn default_policy_allows_with_no_ceiling() {
    let b = Bundle::parse(&Sources::default_bundle(), false).expect("default parses");
    let d = b.decide(&input("default", "cli", "none"));
    assert!(d.allowed, "{d:?}");
    assert!(d.deny.is_empty());
    assert!(d.limits.is_empty());
    assert_eq!(d.bundle, Sources::default_bundle().hash);
}

#[test]
fn default_policy_tests_pass() {
    let r = run_tests(&Sources::default_bundle()).expect("tests run");
    assert!(r.len() >= 4, "{r:?}");
    assert!(r.iter().all(|t| t.passed), "{r:?}");
}

#[test]
fn init_dir_hashes_as_the_default() {
    let d = dir_with(&DEFAULT_FILES);
    let s = Sources::from_dir(d.path()).expect("sources");
    assert_eq!(s.hash, Sources::default_bundle().hash);
    let other = dir_with(&[("aisbx.rego", "package aisbx\nallow := false\n")]);
    assert_ne!(
        Sources::from_dir(other.path()).expect("sources").hash,
        s.hash
    );
}

#[test]
fn deny_reasons_refuse_and_are_reported() {
    let b = bundle_of(&[(
        "p.rego",
        "package aisbx\ndefault allow := true\ndeny contains \"no network for acme\" if {\n input.caller.tenant == \"acme\"\n input.profile.network != \"none\"\n}\n",
    )]);
    let d = b.decide(&input("acme", "http", "host"));
    assert!(!d.allowed);
    assert!(d.allow);
    assert_eq!(d.deny, vec!["no network for acme".to_string()]);
    assert_eq!(
        d.refusal().as_deref(),
        Some("refused by policy: no network for acme")
    );
    assert!(b.decide(&input("acme", "http", "none")).allowed);
    assert!(b.decide(&input("other", "http", "host")).allowed);
}

#[test]
fn undefined_or_false_allow_refuses() {
    let b = bundle_of(&[(
        "p.rego",
        "package aisbx\nallow if input.caller.transport == \"cli\"\n",
    )]);
    assert!(b.decide(&input("t", "cli", "none")).allowed);
    let d = b.decide(&input("t", "http", "none"));
    assert!(!d.allowed);
    assert!(d.deny[0].contains("does not allow"), "{d:?}");
    let b = bundle_of(&[("p.rego", "package aisbx\nallow := \"yes\"\n")]);
    let d = b.decide(&input("t", "cli", "none"));
    assert!(!d.allowed);
    assert!(d.deny[0].contains("not a boolean"), "{d:?}");
}

#[test]
fn limits_become_ceilings_and_typos_refuse() {
    let b = bundle_of(&[(
        "p.rego",
        "package aisbx\ndefault allow := true\nlimits := {\"timeout_secs\": 2, \"memory_bytes\": 1048576, \"pids\": 8, \"cpus\": 0.5}\n",
    )]);
    let d = b.decide(&input("t", "cli", "none"));
    assert!(d.allowed, "{d:?}");
    let mut l = crate::profile::default_limits();
    let notes = d.limits.apply(&mut l);
    assert_eq!(l.wall, Duration::from_secs(2));
    assert_eq!(l.memory_bytes, 1 << 20);
    assert_eq!(l.pids, 8);
    assert_eq!(l.cpus, 0.5);
    assert_eq!(notes.len(), 4);
    // A ceiling above the limit leaves it alone.
    let mut small = crate::profile::default_limits();
    small.wall = Duration::from_secs(1);
    d.limits.apply(&mut small);
    assert_eq!(small.wall, Duration::from_secs(1));

    for bad in [
        "limits := {\"memroy_bytes\": 5}",
        "limits := {\"pids\": -1}",
        "limits := {\"pids\": 1.5}",
        "limits := {\"timeout_secs\": \"10\"}",
        "limits := [1]",
    ] {
        let b = bundle_of(&[(
            "p.rego",
            &format!("package aisbx\ndefault allow := true\n{bad}\n"),
        )]);
        let d = b.decide(&input("t", "cli", "none"));
        assert!(!d.allowed, "{bad}: {d:?}");
    }
}

#[test]
fn data_files_are_merged_into_data() {
    let b = bundle_of(&[
        (
            "p.rego",
            "package aisbx\ndefault allow := true\nlimits := {\"memory_bytes\": data.tiers[input.caller.tenant]} if data.tiers[input.caller.tenant]\n",
        ),
        ("tiers.json", "{\"tiers\": {\"small\": 1000}}"),
    ]);
    assert_eq!(
        b.decide(&input("small", "cli", "none")).limits.memory_bytes,
        Some(1000)
    );
    assert!(b.decide(&input("big", "cli", "none")).limits.is_empty());
}

#[test]
fn a_runaway_policy_is_stopped_and_refuses() {
    let b = bundle_of(&[(
        "p.rego",
        "package aisbx\ndefault allow := true\ndeny contains \"x\" if {\n some i in numbers.range(1, 3000)\n some j in numbers.range(1, 3000)\n i + j < 0\n}\n",
    )]);
    let t = std::time::Instant::now();
    let d = b.decide(&input("t", "cli", "none"));
    eprintln!("runaway: {:?} {d:?}", t.elapsed());
    assert!(!d.allowed, "{d:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn bad_bundles_are_reported_with_file_and_line() {
    let d = dir_with(&[
        ("good.rego", "package aisbx\ndefault allow := true\n"),
        (
            "sub/bad.rego",
            "package aisbx\n\nallow if {\n  input.x ==\n}\n",
        ),
        ("broken.json", "{\"a\": \n"),
    ]);
    let s = Sources::from_dir(d.path()).expect("sources");
    let problems = s.check();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("sub/bad.rego:5:1: expecting expression")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("broken.json:2:")),
        "{problems:?}"
    );
    assert!(Bundle::parse(&s, false).is_err());
}

#[test]
fn a_bundle_without_package_aisbx_is_an_error() {
    let d = dir_with(&[("p.rego", "package other\nallow := true\n")]);
    let s = Sources::from_dir(d.path()).expect("sources");
    let e = Bundle::parse(&s, false).expect_err("no package aisbx");
    assert!(e.0.contains("package aisbx"), "{e}");
}

#[test]
fn explicit_dir_must_hold_rego_and_hidden_entries_are_skipped() {
    let d = dir_with(&[("README.md", "x"), (".git/x.rego", "package aisbx\n")]);
    let e = Sources::from_dir(d.path()).expect_err("no rego");
    assert!(e.0.contains("policy init"), "{e}");
    assert!(Sources::from_dir(Path::new("/nonexistent/policy")).is_err());
}

#[test]
fn links_to_directories_are_not_followed() {
    let d = dir_with(&[("p.rego", "package aisbx\ndefault allow := true\n")]);
    let elsewhere = dir_with(&[("x.rego", "package aisbx\nallow := false\n")]);
    std::os::unix::fs::symlink(elsewhere.path(), d.path().join("linked")).expect("symlink");
    std::os::unix::fs::symlink(d.path(), d.path().join("loop")).expect("symlink");
    let s = Sources::from_dir(d.path()).expect("sources");
    let names: Vec<&str> = s.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["p.rego"]);
}

#[test]
fn standard_dirs_combine_or_fall_back_to_the_default() {
    let home = tempfile::tempdir().expect("tempdir");
    let none = [home.path().join("a"), home.path().join("b")];
    let s = Sources::from_standard(&none).expect("default");
    assert_eq!(s.origin, Origin::Default);
    let a = dir_with(&[("allow.rego", "package aisbx\ndefault allow := true\n")]);
    let b = dir_with(&[(
        "deny.rego",
        "package aisbx\ndeny contains \"no http\" if input.caller.transport == \"http\"\n",
    )]);
    let s =
        Sources::from_standard(&[a.path().to_path_buf(), b.path().to_path_buf()]).expect("both");
    assert!(matches!(&s.origin, Origin::Standard { dirs } if dirs.len() == 2));
    let bundle = Bundle::parse(&s, false).expect("parse");
    assert!(bundle.decide(&input("t", "cli", "none")).allowed);
    assert!(!bundle.decide(&input("t", "http", "none")).allowed);
}

#[test]
fn test_runner_reports_passes_and_failures() {
    let s = Sources::from_dir(
        dir_with(&[
            ("p.rego", "package aisbx\ndefault allow := false\nallow if input.ok\n"),
            (
                "p_test.rego",
                "package aisbx_test\nimport data.aisbx\n\ntest_ok if {\n\taisbx.allow with input as {\"ok\": true}\n}\n\ntest_wrong if aisbx.allow with input as {\"ok\": false}\n\ntest_helper(x) := x\n",
            ),
        ])
        .path(),
    )
    .expect("sources");
    let r = run_tests(&s).expect("run");
    let got: Vec<(&str, bool)> = r.iter().map(|t| (t.name.as_str(), t.passed)).collect();
    assert_eq!(
        got,
        vec![
            ("data.aisbx_test.test_ok", true),
            ("data.aisbx_test.test_wrong", false)
        ]
    );
}

/// Rules are found wherever the bundle declares them: in another file of the
/// package, in a nested directory, or as a partial object of ceilings.
#[test]
fn rules_declared_in_any_file_of_the_package_are_honoured() {
    let b = bundle_of(&[
        ("a.rego", "package aisbx\ndefault allow := true\n"),
        (
            "sub/b.rego",
            "package aisbx\ndeny contains \"from b\" if input.caller.tenant == \"acme\"\n",
        ),
        (
            "c.rego",
            "package aisbx\nlimits[\"memory_bytes\"] := 1048576 if input.caller.tenant == \"acme\"\n",
        ),
    ]);
    let d = b.decide(&input("acme", "cli", "none"));
    assert_eq!(d.deny, vec!["from b".to_string()]);
    assert_eq!(d.limits.memory_bytes, Some(1048576), "{d:?}");
    assert!(b.decide(&input("other", "cli", "none")).allowed);
    // A bundle whose `allow` exists only in a package other than aisbx has none.
    let d = dir_with(&[
        ("a.rego", "package aisbx\nx := 1\n"),
        ("b.rego", "package other\nallow := true\n"),
    ]);
    let e = Bundle::parse(&Sources::from_dir(d.path()).expect("sources"), false).unwrap_err();
    assert!(e.0.contains("declares no `allow` rule"), "{e}");
}

#[test]
fn quotas_are_read_checked_and_only_lower() {
    let b = bundle_of(&[(
        "p.rego",
        "package aisbx\ndefault allow := true\nquotas := {\"concurrent_runs\": 1, \"runs_per_minute\": 0} if input.caller.tenant == \"small\"\n",
    )]);
    let d = b.decide(&input("small", "cli", "none"));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.quotas.concurrent_runs, Some(1));
    assert_eq!(d.quotas.runs_per_minute, Some(0));
    assert!(b.decide(&input("big", "cli", "none")).quotas.is_empty());
    let alone = b
        .quotas(&serde_json::json!({"tool": "quota", "caller": {"tenant": "small"}}))
        .expect("quotas");
    assert_eq!(alone, d.quotas);
    // Lower than the file's, never higher; unset in the file: the policy's.
    let file = crate::tenants::Quota {
        concurrent_runs: Some(4),
        sandboxes: Some(3),
        ..Default::default()
    };
    let q = file.lowered_by(&d.quotas);
    assert_eq!(
        (q.concurrent_runs, q.sandboxes, q.runs_per_minute),
        (Some(1), Some(3), Some(0))
    );
    let high = crate::tenants::Quota {
        concurrent_runs: Some(10),
        ..Default::default()
    };
    assert_eq!(file.lowered_by(&high).concurrent_runs, Some(4));
    // The default policy declares none.
    let def = Bundle::parse(&Sources::default_bundle(), false).expect("default");
    assert!(def.decide(&input("x", "cli", "none")).quotas.is_empty());
    // A typo or a bad value refuses, as for limits.
    for bad in [
        "{\"concurent_runs\": 1}",
        "{\"concurrent_runs\": -1}",
        "{\"concurrent_runs\": 1.5}",
        "{\"concurrent_runs\": \"1\"}",
        "[1]",
    ] {
        let b = bundle_of(&[(
            "p.rego",
            &format!("package aisbx\ndefault allow := true\nquotas := {bad}\n"),
        )]);
        let d = b.decide(&input("t", "cli", "none"));
        assert!(!d.allowed, "{bad}: {d:?}");
        assert!(d.deny.iter().any(|r| r.contains("quotas")), "{bad}: {d:?}");
    }
}
