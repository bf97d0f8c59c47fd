use super::*;

/// The built-ins plus the given project files.
fn catalog_with(files: &[(&str, &str)]) -> (Catalog, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join(".aisbx/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }
    let mut c = Catalog::builtin();
    c.add_dir(&dir, Source::Project);
    (c, t)
}

fn val(p: &Profile, k: &str) -> Val {
    p.values
        .get(k)
        .map(|v| v.val.clone())
        .unwrap_or_else(|| panic!("{k} missing"))
}

fn from(p: &Profile, k: &str) -> Vec<String> {
    p.values[k].from.clone()
}

#[test]
fn every_builtin_is_valid() {
    let c = Catalog::builtin();
    for name in c.names() {
        let p = c.resolve(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!p.description.is_empty(), "{name} has no description");
    }
    for name in [
        "base",
        "strict",
        "dev",
        "python",
        "node",
        "bash",
        "sh",
        "perl",
        "go",
        "ruby",
        "java",
        "rust",
        "python-dev",
        "python-prod",
        "node-dev",
        "node-prod",
        "bash-dev",
        "bash-prod",
    ] {
        assert!(c.names().iter().any(|n| n == name), "{name} missing");
    }
}

#[test]
fn base_is_the_spec_defaults_and_default_is_its_alias() {
    let c = Catalog::builtin();
    let p = c.resolve("default").unwrap();
    assert_eq!(p.name, "base");
    assert_eq!(p.limits.wall, Duration::from_secs(30));
    assert_eq!(p.limits.memory_bytes, 512 << 20);
    assert_eq!(p.limits.pids, 256);
    assert_eq!(p.limits.cpus, 1.0);
    assert_eq!(p.limits.nofile, 1024);
    assert_eq!(p.limits.tmp_bytes, 256 << 20);
    assert_eq!(p.limits.output_bytes, 1 << 20);
    assert_eq!(p.workspace_bytes, 1 << 30);
    assert_eq!(p.seccomp, SeccompLevel::Default);
    assert_eq!(p.landlock, Enforcement::BestEffort);
    assert!(p.language.is_none());
}

#[test]
fn dev_and_prod_variants_compose_language_and_limits() {
    let c = Catalog::builtin();
    let dev = c.resolve("python-dev").unwrap();
    let labels: Vec<String> = dev.chain.iter().map(LayerRef::label).collect();
    assert_eq!(
        labels,
        [
            "base (builtin)",
            "python (builtin)",
            "dev (builtin)",
            "python-dev (builtin)"
        ]
    );
    assert_eq!(
        dev.language.as_ref().map(|l| l.name.as_str()),
        Some("python")
    );
    assert_eq!(dev.seccomp, SeccompLevel::Dev);
    assert_eq!(dev.limits.wall, Duration::from_secs(300));
    assert_eq!(from(&dev, "limits.timeout"), ["dev (builtin)"]);
    assert_eq!(from(&dev, "runtime.language"), ["python (builtin)"]);
    assert!(dev.env.iter().any(|(k, _)| k == "PYTHONUNBUFFERED"));
    let prod = c.resolve("node-prod").unwrap();
    assert_eq!(prod.landlock, Enforcement::Required);
    assert_eq!(prod.limits.memory_bytes, 256 << 20);
    assert_eq!(
        prod.language.as_ref().map(|l| l.name.as_str()),
        Some("node")
    );
}

#[test]
fn scalars_override_tables_merge_lists_replace_or_append() {
    let (c, _t) = catalog_with(&[
        (
            "a",
            r#"extends = ["python"]
[limits]
timeout = "5s"
[env]
A = "1"
B = "1"
[runtime]
markers = ["only-this"]
extensions = { append = ["pyx"] }
"#,
        ),
        (
            "b",
            r#"extends = ["a"]
[limits]
memory = "128M"
[env]
B = "2"
[runtime]
extensions = { append = ["pyi"] }
"#,
        ),
    ]);
    let p = c.resolve("b").unwrap();
    // Scalars: the nearest layer wins; tables merge key by key.
    assert_eq!(p.limits.wall, Duration::from_secs(5));
    assert_eq!(p.limits.memory_bytes, 128 << 20);
    assert_eq!(p.limits.pids, 256);
    assert_eq!(from(&p, "limits.timeout"), ["a (project)"]);
    assert_eq!(from(&p, "limits.memory"), ["b (project)"]);
    assert_eq!(from(&p, "limits.pids"), ["base (builtin)"]);
    let env: BTreeMap<_, _> = p.env.iter().cloned().collect();
    assert_eq!(env.get("A").map(String::as_str), Some("1"));
    assert_eq!(env.get("B").map(String::as_str), Some("2"));
    assert_eq!(env.get("PYTHONUNBUFFERED").map(String::as_str), Some("1"));
    // Lists replace...
    assert_eq!(
        val(&p, "runtime.markers"),
        Val::List(vec!["only-this".into()])
    );
    // ...unless appended, and each appending layer is named.
    assert_eq!(
        val(&p, "runtime.extensions"),
        Val::List(vec!["py".into(), "pyw".into(), "pyx".into(), "pyi".into()])
    );
    assert_eq!(
        from(&p, "runtime.extensions"),
        ["python (builtin)", "a (project)", "b (project)"]
    );
    // name and description are the profile's own, never inherited.
    assert_eq!(p.description, "");
}

#[test]
fn linearization_is_depth_first_left_to_right_each_once() {
    let (c, _t) = catalog_with(&[
        ("x", "extends = [\"base\"]\n[limits]\npids = 10\n"),
        ("y", "extends = [\"base\"]\n[limits]\npids = 20\n"),
        ("z", "extends = [\"x\", \"y\"]\n"),
        ("w", "extends = [\"y\", \"x\"]\n"),
    ]);
    let z = c.resolve("z").unwrap();
    let names: Vec<&str> = z.chain.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["base", "x", "y", "z"]);
    assert_eq!(z.limits.pids, 20, "the later parent wins");
    let w = c.resolve("w").unwrap();
    assert_eq!(w.limits.pids, 10);
}

#[test]
fn cycles_and_missing_parents_name_the_chain() {
    let (c, _t) = catalog_with(&[
        ("p", "extends = [\"q\"]\n"),
        ("q", "extends = [\"r\"]\n"),
        ("r", "extends = [\"p\"]\n"),
        ("m", "extends = [\"base\", \"n\"]\n"),
        ("n", "extends = [\"pyhton\"]\n"),
    ]);
    let e = c.resolve("p").unwrap_err().to_string();
    assert!(
        e.contains("cycle: p (project) → q (project) → r (project) → p (project)"),
        "{e}"
    );
    let e = c.resolve("m").unwrap_err().to_string();
    assert!(e.contains("chain: m → n → pyhton"), "{e}");
    assert!(e.contains("did you mean 'python'?"), "{e}");
    assert!(e.contains("n.toml:1:1"), "{e}");
}

#[test]
fn a_project_profile_overrides_a_builtin_and_may_extend_it() {
    let (c, _t) = catalog_with(&[(
        "python",
        "description = \"team python\"\nextends = [\"python\"]\n[limits]\ntimeout = \"7s\"\n",
    )]);
    let p = c.resolve("python").unwrap();
    assert_eq!(p.source, Source::Project);
    assert_eq!(p.description, "team python");
    assert_eq!(p.limits.wall, Duration::from_secs(7));
    assert_eq!(p.language.as_ref().map(|l| l.name.as_str()), Some("python"));
    let labels: Vec<String> = p.chain.iter().map(LayerRef::label).collect();
    assert_eq!(
        labels,
        ["base (builtin)", "python (builtin)", "python (project)"]
    );
    // Those built on it see the override too.
    let dev = c.resolve("python-dev").unwrap();
    assert!(dev.chain.iter().any(|l| l.source == Source::Project));
    // A profile extending itself with nothing below is an error.
    let (c, _t) = catalog_with(&[("solo", "extends = [\"solo\"]\n")]);
    assert!(
        c.resolve("solo")
            .unwrap_err()
            .to_string()
            .contains("extends itself")
    );
}

#[test]
fn a_broken_file_is_reported_when_used_and_listed_as_unavailable() {
    let (c, _t) = catalog_with(&[("bad", "extends = [\"base\"]\n[limits]\ntimout = 5\n")]);
    let e = c.resolve("bad").unwrap_err().to_string();
    assert!(
        e.contains("bad.toml:3:1: unknown key 'timout' in [limits]; did you mean 'timeout'?"),
        "{e}"
    );
    let info = c.info("bad");
    assert!(!info.available);
    assert!(info.missing.unwrap_or_default().contains("timout"));
    // Others still resolve.
    assert!(c.resolve("python").is_ok());
}

#[test]
fn unavailable_runtimes_say_what_is_missing() {
    let (c, _t) = catalog_with(&[
        (
            "cobol",
            "extends = [\"base\"]\n[runtime]\nlanguage = \"cobol\"\ninterpreters = [\"no-such-cobc-xyz\"]\nextensions = [\"cob\"]\n",
        ),
        (
            "needy",
            "extends = [\"base\"]\n[runtime]\nlanguage = \"needy\"\ninterpreters = [\"sh\"]\nrequires = [\"no-such-linker-xyz\"]\n",
        ),
    ]);
    let c = c.with_host_path("/usr/bin:/bin");
    let i = c.info("cobol");
    assert!(!i.available);
    assert!(i.missing.unwrap_or_default().contains("no-such-cobc-xyz"));
    let i = c.info("needy");
    assert!(!i.available);
    assert!(i.missing.unwrap_or_default().contains("no-such-linker-xyz"));
    assert!(c.info("sh").available);
    assert_eq!(c.info("base").missing, None);
}

#[test]
fn runtime_sections_are_checked_after_the_merge() {
    let (c, _t) = catalog_with(&[
        ("nolang", "[runtime]\ninterpreters = [\"x\"]\n"),
        (
            "nofile",
            "[runtime]\nlanguage = \"q\"\ninterpreters = [\"q\"]\nrun = [\"{interpreter}\"]\n",
        ),
    ]);
    assert!(
        c.resolve("nolang")
            .unwrap_err()
            .to_string()
            .contains("no runtime.language")
    );
    assert!(
        c.resolve("nofile")
            .unwrap_err()
            .to_string()
            .contains("{file}")
    );
}

#[test]
fn resolved_rendering_names_every_layer() {
    let c = Catalog::builtin();
    let out = c.resolve("python-prod").unwrap().render_resolved();
    assert!(out.contains("# chain, applied in this order: base (builtin) → python (builtin) → strict (builtin) → python-prod (builtin)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("timeout = \"10s\"") && l.ends_with("# strict (builtin)")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("language = \"python\"") && l.ends_with("# python (builtin)")),
        "{out}"
    );
    // The rendering is itself TOML.
    let stripped: String = out
        .lines()
        .map(|l| format!("{}\n", l.split(" # ").next().unwrap_or(l).trim_end()))
        .collect();
    assert!(stripped.parse::<toml::Table>().is_ok(), "{stripped}");
}

/// Detection over many fixtures: (files in the project dir, script name and content
/// or code, --lang, --profile) → (profile, basis).
#[test]
fn detection_table() {
    struct Case {
        what: &'static str,
        project: &'static [(&'static str, &'static str)],
        file: Option<(&'static str, &'static str)>,
        code: Option<&'static str>,
        lang: Option<&'static str>,
        profile: Option<&'static str>,
        want: Result<(&'static str, Basis), &'static str>,
    }
    let none: &[(&str, &str)] = &[];
    let cases = [
        Case {
            what: "explicit profile wins over everything",
            project: &[("package.json", "{}")],
            file: Some(("x.py", "print(1)")),
            code: None,
            lang: None,
            profile: Some("python-prod"),
            want: Ok(("python-prod", Basis::Profile)),
        },
        Case {
            what: "--lang wins over the extension",
            project: none,
            file: None,
            code: Some("console.log(1)"),
            lang: Some("js"),
            profile: None,
            want: Ok(("node", Basis::Lang)),
        },
        Case {
            what: "extension",
            project: none,
            file: Some(("hello.py", "print(1)")),
            code: None,
            lang: None,
            profile: None,
            want: Ok(("python", Basis::Extension)),
        },
        Case {
            what: "extension wins over the shebang",
            project: none,
            file: Some(("x.js", "#!/usr/bin/env python3\n")),
            code: None,
            lang: None,
            profile: None,
            want: Ok(("node", Basis::Extension)),
        },
        Case {
            what: "python file without extension but with a shebang",
            project: none,
            file: Some(("tool", "#!/usr/bin/env python3\nprint(1)\n")),
            code: None,
            lang: None,
            profile: None,
            want: Ok(("python", Basis::Shebang)),
        },
        Case {
            what: "versioned interpreter in a shebang",
            project: none,
            file: Some(("run", "#!/usr/bin/python3.11 -u\n")),
            code: None,
            lang: None,
            profile: None,
            want: Ok(("python", Basis::Shebang)),
        },
        Case {
            what: "bash shebang",
            project: none,
            file: Some(("build", "#!/bin/bash -e\necho hi\n")),
            code: None,
            lang: None,
            profile: None,
            want: Ok(("bash", Basis::Shebang)),
        },
        Case {
            what: "sh shebang",
            project: none,
            file: Some(("s", "#!/bin/sh\n")),
            code: None,
            lang: None,
            profile: None,
            want: Ok(("sh", Basis::Shebang)),
        },
        Case {
            what: "env -S node",
            project: none,
            file: Some(("n", "#!/usr/bin/env -S node --no-warnings\n")),
            code: None,
            lang: None,
            profile: None,
            want: Ok(("node", Basis::Shebang)),
        },
        Case {
            what: "a stray .py in a Node project is still Python",
            project: &[("package.json", "{}"), ("stray.py", "")],
            file: Some(("stray.py", "print(1)")),
            code: None,
            lang: None,
            profile: None,
            want: Ok(("python", Basis::Extension)),
        },
        Case {
            what: "code in a Node project with a stray .py is Node",
            project: &[("package.json", "{}"), ("stray.py", "")],
            file: None,
            code: Some("x = 1"),
            lang: None,
            profile: None,
            want: Ok(("node", Basis::Marker)),
        },
        Case {
            what: "a command in a Node project",
            project: &[("package.json", "{}"), ("stray.py", "")],
            file: None,
            code: None,
            lang: None,
            profile: None,
            want: Ok(("node", Basis::Marker)),
        },
        Case {
            what: "go.mod",
            project: &[("go.mod", "module x")],
            file: None,
            code: Some("x"),
            lang: None,
            profile: None,
            want: Ok(("go", Basis::Marker)),
        },
        Case {
            what: "Cargo.toml",
            project: &[("Cargo.toml", "")],
            file: None,
            code: Some("x"),
            lang: None,
            profile: None,
            want: Ok(("rust", Basis::Marker)),
        },
        Case {
            what: "Gemfile",
            project: &[("Gemfile", "")],
            file: None,
            code: Some("x"),
            lang: None,
            profile: None,
            want: Ok(("ruby", Basis::Marker)),
        },
        Case {
            what: "*.gemspec",
            project: &[("x.gemspec", "")],
            file: None,
            code: Some("x"),
            lang: None,
            profile: None,
            want: Ok(("ruby", Basis::Marker)),
        },
        Case {
            what: "pom.xml",
            project: &[("pom.xml", "")],
            file: None,
            code: Some("x"),
            lang: None,
            profile: None,
            want: Ok(("java", Basis::Marker)),
        },
        Case {
            what: "requirements.txt",
            project: &[("requirements.txt", "")],
            file: None,
            code: Some("x"),
            lang: None,
            profile: None,
            want: Ok(("python", Basis::Marker)),
        },
        Case {
            what: "two markers: language order decides",
            project: &[("package.json", ""), ("pyproject.toml", "")],
            file: None,
            code: Some("x"),
            lang: None,
            profile: None,
            want: Ok(("python", Basis::Marker)),
        },
        Case {
            what: "a script without extension or shebang in a project dir",
            project: &[("go.mod", "")],
            file: Some(("script", "fmt.Println(1)")),
            code: None,
            lang: None,
            profile: None,
            want: Ok(("go", Basis::Marker)),
        },
        Case {
            what: "python code by its keywords",
            project: none,
            file: None,
            code: Some("def f():\n    return None\nprint(f())\n"),
            lang: None,
            profile: None,
            want: Ok(("python", Basis::Code)),
        },
        Case {
            what: "node code by its keywords",
            project: none,
            file: None,
            code: Some("const x = () => 1;\nconsole.log(x())\n"),
            lang: None,
            profile: None,
            want: Ok(("node", Basis::Code)),
        },
        Case {
            what: "go code by its keywords",
            project: none,
            file: None,
            code: Some("package main\nfunc main() { fmt.Println(1) }\n"),
            lang: None,
            profile: None,
            want: Ok(("go", Basis::Code)),
        },
        Case {
            what: "rust code by its keywords",
            project: none,
            file: None,
            code: Some("fn main() { let mut x = 1; println!(\"{x}\"); }"),
            lang: None,
            profile: None,
            want: Ok(("rust", Basis::Code)),
        },
        Case {
            what: "java code by its keywords",
            project: none,
            file: None,
            code: Some(
                "public class M { public static void main(String[] a) { System.out.println(1); } }",
            ),
            lang: None,
            profile: None,
            want: Ok(("java", Basis::Code)),
        },
        Case {
            what: "a shebang in --code",
            project: none,
            file: None,
            code: Some("#!/usr/bin/env perl\nprint 1;"),
            lang: None,
            profile: None,
            want: Ok(("perl", Basis::Shebang)),
        },
        Case {
            what: "nothing telling in the code",
            project: none,
            file: None,
            code: Some("42"),
            lang: None,
            profile: None,
            want: Err("cannot tell the language of the code"),
        },
        Case {
            what: "a plain command",
            project: none,
            file: None,
            code: None,
            lang: None,
            profile: None,
            want: Ok(("base", Basis::Default)),
        },
        Case {
            what: "runtime-less profile plus a language",
            project: none,
            file: Some(("a.py", "")),
            code: None,
            lang: None,
            profile: Some("strict"),
            want: Ok(("strict", Basis::Profile)),
        },
        Case {
            what: "profile and a contradicting --lang",
            project: none,
            file: None,
            code: Some("x"),
            lang: Some("node"),
            profile: Some("python"),
            want: Err("runs python, not 'node'"),
        },
        Case {
            what: "unknown language",
            project: none,
            file: None,
            code: Some("x"),
            lang: Some("pyhton"),
            profile: None,
            want: Err("did you mean 'python'?"),
        },
    ];
    let c = Catalog::builtin();
    for case in cases {
        let t = tempfile::tempdir().unwrap();
        for (name, text) in case.project {
            std::fs::write(t.path().join(name), text).unwrap();
        }
        let file = case
            .file
            .map(|(n, body)| (t.path().join(n), body.as_bytes().to_vec()));
        let has_project = !case.project.is_empty();
        let input = DetectInput {
            profile: case.profile,
            lang: case.lang,
            file: file.as_ref().map(|(p, b)| (p.as_path(), b.as_slice())),
            code: case.code,
            dir: has_project.then_some(t.path()),
        };
        let got = c.detect(&input);
        match (&case.want, got) {
            (Ok((name, basis)), Ok(d)) => {
                assert_eq!(
                    (d.profile.name.as_str(), d.basis),
                    (*name, *basis),
                    "{}: {}",
                    case.what,
                    d.reason
                );
                assert!(!d.reason.is_empty());
            }
            (Err(want), Err(e)) => assert!(e.to_string().contains(want), "{}: {e}", case.what),
            (want, got) => panic!("{}: wanted {want:?}, got {got:?}", case.what),
        }
    }
}

#[test]
fn lang_finds_the_profile_by_name_alias_or_override() {
    let lang = |c: &Catalog, asked: &str| {
        c.detect(&DetectInput {
            lang: Some(asked),
            code: Some("1"),
            ..Default::default()
        })
        .map(|d| (d.profile.name, d.language.map(|l| l.name)))
    };
    let c = Catalog::builtin();
    let py = ("python".to_string(), Some("python".to_string()));
    assert_eq!(lang(&c, "python").unwrap(), py);
    // Aliases go through every language profile.
    assert_eq!(lang(&c, "py").unwrap(), py);
    assert_eq!(lang(&c, "js").unwrap().0, "node");
    assert!(lang(&c, "cobol").is_err());
    // A project profile named python replaces the built-in one for --lang python.
    let (c, _t) = catalog_with(&[(
        "python",
        "description = \"team\"\nextends = [\"python\"]\n[env]\nTEAM = \"1\"\n",
    )]);
    let d = c
        .detect(&DetectInput {
            lang: Some("python"),
            code: Some("1"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(d.profile.description, "team");
    // A profile that is named like a language but runs none is not that language.
    let (c, _t) = catalog_with(&[(
        "perl",
        "description = \"no language\"\nextends = [\"base\"]\n",
    )]);
    assert!(lang(&c, "perl").is_err());
}

#[test]
fn detection_explains_ambiguity_and_language_of_runtimeless_profiles() {
    let c = Catalog::builtin();
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("package.json"), "{}").unwrap();
    std::fs::write(t.path().join("requirements.txt"), "").unwrap();
    let d = c
        .detect(&DetectInput {
            code: Some("1"),
            dir: Some(t.path()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        d.reason.contains("also package.json for node"),
        "{}",
        d.reason
    );
    let f = t.path().join("a.py");
    let d = c
        .detect(&DetectInput {
            profile: Some("strict"),
            file: Some((&f, b"")),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(d.language.map(|l| l.name), Some("python".to_string()));
    assert!(
        d.reason
            .contains("profile strict given; language python from the .py"),
        "{}",
        d.reason
    );
}

#[test]
fn a_command_in_a_project_whose_runtime_is_missing_falls_back_to_base_and_says_so() {
    let c = Catalog::builtin().with_host_path("/nonexistent");
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("go.mod"), "").unwrap();
    let d = c
        .detect(&DetectInput {
            dir: Some(t.path()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(d.profile.name, "base");
    assert!(d.reason.contains("go is not installed"), "{}", d.reason);
}

#[test]
fn project_dir_is_found_upward() {
    let t = tempfile::tempdir().unwrap();
    let deep = t.path().join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::create_dir_all(t.path().join("a/.aisbx/profiles")).unwrap();
    let found = project_profiles_dir(&deep).unwrap();
    assert!(found.ends_with("a/.aisbx/profiles"), "{}", found.display());
}

#[test]
fn overrides_are_bounded() {
    let l = default_limits();
    let ok = check_limits(
        l.clone(),
        &LimitOverrides {
            timeout_secs: Some(2.5),
            memory_bytes: Some(64 << 20),
            pids: Some(10),
            cpus: Some(0.5),
        },
    )
    .unwrap();
    assert_eq!(ok.wall, Duration::from_millis(2500));
    assert_eq!(ok.pids, 10);
    for bad in [
        LimitOverrides {
            timeout_secs: Some(0.0),
            ..Default::default()
        },
        LimitOverrides {
            timeout_secs: Some(f64::NAN),
            ..Default::default()
        },
        LimitOverrides {
            memory_bytes: Some(1),
            ..Default::default()
        },
        LimitOverrides {
            pids: Some(1),
            ..Default::default()
        },
        LimitOverrides {
            cpus: Some(-1.0),
            ..Default::default()
        },
    ] {
        assert!(check_limits(l.clone(), &bad).is_err(), "{bad:?}");
    }
}

#[test]
fn unknown_profile_names_the_field() {
    match Catalog::builtin()
        .resolve("nope-xyz")
        .map_err(ServiceError::from)
    {
        Err(ServiceError::InvalidArgument { field, .. }) => assert_eq!(field, "profile"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn project_profiles_are_used_only_once_approved() {
    let t = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(t.path()).unwrap().join("proj");
    let dir = root.join(".aisbx/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("team.toml"), "[limits]\npids = 33\n").unwrap();
    let home = t.path().join("state");
    let load = |mode| Catalog::load_with(Some(&root), &home, mode);

    // Not approved: left out, listed as untrusted, and the reason names the file.
    let c = load(ProjectProfiles::TrustedOnly);
    let why = c.project_problem.clone().unwrap();
    assert!(
        why.contains(&dir.join("team.toml").display().to_string()),
        "{why}"
    );
    assert!(
        why.contains(&format!("aisbx trust {}", root.display())),
        "{why}"
    );
    let e = c.resolve("team").unwrap_err().to_string();
    assert!(e.contains("not trusted"), "{e}");
    let row = c.infos().into_iter().find(|i| i.name == "team").unwrap();
    assert_eq!((row.source.as_str(), row.available), ("project", false));
    // For review it is there, still marked.
    let r = Catalog::load_for_review(Some(&root), &home);
    assert!(r.project_problem.is_some());
    assert_eq!(r.resolve("team").unwrap().limits.pids, 33);

    // Approved: used. Ignored: not even looked at.
    trust::approve(&home, &trust::read_project(&root).unwrap()).unwrap();
    let c = load(ProjectProfiles::Require);
    assert_eq!(c.project_problem, None);
    assert_eq!(c.resolve("team").unwrap().limits.pids, 33);
    let c = load(ProjectProfiles::Ignore);
    assert!(c.project_dir.is_none() && c.resolve("team").is_err());

    // Edited: not used any more, and the reason says it changed.
    std::fs::write(dir.join("team.toml"), "[limits]\npids = 34\n").unwrap();
    let c = load(ProjectProfiles::TrustedOnly);
    assert!(
        c.project_problem
            .as_deref()
            .unwrap()
            .contains("changed since")
    );
    assert!(c.resolve("team").is_err());
}

#[test]
fn what_a_project_profile_may_not_do_even_approved() {
    let t = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(t.path()).unwrap();
    std::fs::create_dir(root.join("cache")).unwrap();
    let layer = |text: &str| {
        schema::parse(text, "p", Source::Project, "p.toml", None)
            .unwrap_or_else(|d| panic!("{d:?}"))
    };
    let inside = format!("[filesystem]\nrw_binds = [\"{}/cache\"]\n", root.display());
    assert!(check_project_layer(&layer(&inside), &root).is_empty());
    let outside = "[filesystem]\nrw_binds = [\"/srv/elsewhere\"]\n";
    let d = check_project_layer(&layer(outside), &root);
    assert!(
        d[0].message.contains("outside the project directory"),
        "{d:?}"
    );
    let interp = "[runtime]\nlanguage = \"x\"\ninterpreters = [\"/usr/bin/python3\", \"python3\", \"/srv/x/bin/tool\"]\n";
    let d = check_project_layer(&layer(interp), &root);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("/srv/x/bin/tool"), "{d:?}");
    let d = check_project_layer(&layer("[perimeter]\nallow = [\"/srv/data\"]\n"), &root);
    assert!(d[0].message.contains("only a user profile"), "{d:?}");
}

/// The error detection gives for `input`, as one string.
fn detect_err(c: &Catalog, input: DetectInput<'_>) -> String {
    match c.detect(&input) {
        Ok(d) => panic!("chose {} ({})", d.profile.name, d.reason),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_broken_profile_is_the_error_wherever_it_could_be_chosen() {
    // A python.toml with a typo shadows the built-in python: every way of
    // reaching python names its file and line, and none falls back to the built-in.
    let broken = "extends = [\"python\"]\n[limits]\ntimout = \"5s\"\n";
    let (c, t) = catalog_with(&[("python", broken)]);
    let file = format!(
        "{}:3:1: unknown key 'timout'",
        t.path().join(".aisbx/profiles/python.toml").display()
    );
    let proj = t.path().join("proj");
    std::fs::create_dir(&proj).unwrap();
    std::fs::write(proj.join("requirements.txt"), "").unwrap();
    let script = Path::new("x.py");
    let tool = Path::new("tool");
    for (input, what) in [
        (
            DetectInput {
                lang: Some("python"),
                code: Some("1"),
                ..Default::default()
            },
            "--lang python",
        ),
        (
            DetectInput {
                lang: Some("py"),
                code: Some("1"),
                ..Default::default()
            },
            "--lang py",
        ),
        (
            DetectInput {
                profile: Some("strict"),
                lang: Some("python"),
                code: Some("1"),
                ..Default::default()
            },
            "--lang python",
        ),
        (
            DetectInput {
                file: Some((script, b"print(1)")),
                ..Default::default()
            },
            "the .py extension of x.py",
        ),
        (
            DetectInput {
                file: Some((tool, b"#!/usr/bin/env python3\nprint(1)\n")),
                ..Default::default()
            },
            "the #!python3 line of tool",
        ),
        (
            DetectInput {
                code: Some("import os\ndef f(): pass"),
                ..Default::default()
            },
            "the code itself",
        ),
        (
            DetectInput {
                dir: Some(&proj),
                ..Default::default()
            },
            "the project markers in",
        ),
        (
            DetectInput {
                code: Some("x"),
                dir: Some(&proj),
                ..Default::default()
            },
            "the project markers in",
        ),
    ] {
        let e = detect_err(&c, input);
        assert!(
            e.contains(&format!("profile 'python' could be chosen for {what}")),
            "{e}"
        );
        assert!(e.contains(&file), "{e}");
        assert!(!e.contains("unknown language"), "{e}");
    }
    // What the broken profile could not have matched still runs.
    let d = c
        .detect(&DetectInput {
            file: Some((Path::new("y.js"), b"console.log(1)")),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(d.profile.name, "node");
    // And a profile given by name reports its own errors, as before.
    let e = c.resolve("python").unwrap_err().to_string();
    assert!(e.contains(&file), "{e}");
}

#[test]
fn a_broken_new_language_or_parent_is_found_too() {
    // A new language profile with an error: its own [runtime] tells what it matches.
    let lua = "[runtime]\nlanguage = \"lua\"\naliases = [\"lua5\"]\ninterpreters = [\"lua5.4\"]\nextensions = [\"lua\"]\nbogus = 1\n";
    let (c, _t) = catalog_with(&[("lua", lua)]);
    for input in [
        DetectInput {
            lang: Some("lua5"),
            ..Default::default()
        },
        DetectInput {
            file: Some((Path::new("z.lua"), b"print(1)")),
            ..Default::default()
        },
        DetectInput {
            code: Some("#!/usr/bin/lua5.4\nprint(1)"),
            ..Default::default()
        },
    ] {
        let e = detect_err(&c, input);
        assert!(e.contains("profile 'lua' could be chosen"), "{e}");
        assert!(e.contains("lua.toml:6:1: unknown key 'bogus'"), "{e}");
    }
    assert_eq!(
        c.detect(&DetectInput {
            file: Some((Path::new("x.py"), b"print(1)")),
            ..Default::default()
        })
        .unwrap()
        .profile
        .name,
        "python"
    );
    // A broken base breaks every language on it; the error names base's file.
    let (c, _t) = catalog_with(&[("base", "[limits]\ntimeout = \"forever\"\n")]);
    let e = detect_err(
        &c,
        DetectInput {
            file: Some((Path::new("x.py"), b"print(1)")),
            ..Default::default()
        },
    );
    assert!(e.contains("profile 'python' could be chosen"), "{e}");
    assert!(e.contains("base.toml:2:11: limits.timeout"), "{e}");
    // A file that is not even TOML could be anything: detection stops on it, a
    // profile given by name and a plain command outside a project do not.
    let (c, t) = catalog_with(&[("junk", "this is [not toml\n")]);
    let e = detect_err(
        &c,
        DetectInput {
            file: Some((Path::new("x.py"), b"print(1)")),
            ..Default::default()
        },
    );
    assert!(e.contains("profile 'junk' could be chosen"), "{e}");
    assert!(e.contains("its file is not TOML"), "{e}");
    assert!(e.contains("junk.toml:1:"), "{e}");
    let named = c
        .detect(&DetectInput {
            profile: Some("python"),
            code: Some("1"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(named.profile.name, "python");
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let cmd = c
        .detect(&DetectInput {
            dir: Some(&empty),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(cmd.profile.name, "base");
    // A profile that is not a language profile does not stop detection.
    let (c, _t) = catalog_with(&[("team", "extends = [\"strict\"]\n[limits]\nbogus = 1\n")]);
    assert_eq!(
        c.detect(&DetectInput {
            file: Some((Path::new("x.py"), b"print(1)")),
            ..Default::default()
        })
        .unwrap()
        .profile
        .name,
        "python"
    );
}

#[test]
fn network_is_off_unless_a_profile_opens_an_allowlist() {
    let c = Catalog::builtin();
    for name in [
        "base",
        "python",
        "node",
        "dev",
        "python-prod",
        "bash-dev",
        "strict",
    ] {
        assert_eq!(c.resolve(name).unwrap().network, None, "{name}");
    }
    for (name, eco) in [("python-dev", "python"), ("node-dev", "node")] {
        let n = c.resolve(name).unwrap().network.expect(name);
        assert_eq!(n.packages, [eco]);
        assert!(n.allow.is_empty() && n.deny.is_empty());
        assert_eq!((n.max_connections, n.max_egress), (64, 2 << 30));
    }
    // A profile's entries add to what it extends; mode = "none" turns it off.
    let (c, _t) = catalog_with(&[
        (
            "web",
            "extends = [\"python-dev\"]\n[network]\nallow = [\"*.example.org\"]\ndeny = [\"x.example.org\"]\nmax_egress = \"10M\"\n",
        ),
        ("off", "extends = [\"web\"]\n[network]\nmode = \"none\"\n"),
    ]);
    let web = c.resolve("web").unwrap().network.unwrap();
    assert_eq!(web.allow, ["*.example.org"]);
    assert_eq!(web.deny, ["x.example.org"]);
    assert_eq!(web.packages, ["python"]);
    assert_eq!(web.max_egress, 10 << 20);
    assert_eq!(c.resolve("off").unwrap().network, None);
}
