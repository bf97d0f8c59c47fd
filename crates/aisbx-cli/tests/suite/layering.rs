//! The front ends reach the service through its gate alone (`Service::call`):
//! neither depends on the jail crate, and neither writes audit entries, walks a
//! sandbox's files or drives the profile catalog itself. Visibility enforces most
//! of this (the crate is not a dependency, the audit entry is private to the
//! service); this test keeps it from being undone by adding the dependency back.

use std::path::{Path, PathBuf};

fn front_ends() -> Vec<PathBuf> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    vec![crates.join("aisbx-cli"), crates.join("aisbx-mcp")]
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn front_ends_reach_only_the_gate() {
    let this = Path::new(file!()).file_name().expect("name");
    let mut checked = 0;
    for fe in front_ends() {
        let manifest = std::fs::read_to_string(fe.join("Cargo.toml")).expect("Cargo.toml");
        assert!(
            !manifest.contains("aisbx-jail"),
            "{} depends on aisbx-jail: front ends reach the jail through the service's gate",
            fe.display()
        );
        let mut files = Vec::new();
        rust_files(&fe.join("src"), &mut files);
        rust_files(&fe.join("tests"), &mut files);
        for f in files {
            if f.file_name() == Some(this) {
                continue;
            }
            let text = std::fs::read_to_string(&f).expect("read");
            for bypass in [
                "aisbx_jail::",
                "AuditEntry",
                "digest_args",
                "AuditLog",
                "snapshot_fs",
                "Catalog",
            ] {
                assert!(
                    !text.contains(bypass),
                    "{} names {bypass}: front ends go through Service::call",
                    f.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} files checked");
}
