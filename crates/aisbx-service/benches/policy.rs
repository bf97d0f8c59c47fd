//! The cost of policy decisions: `cargo bench -p aisbx-service --bench policy`.
//! Prints the median time to load the default bundle (paid once per process)
//! and to decide one `run` (paid per request, on a clone of the loaded engine).

use std::time::{Duration, Instant};

use aisbx_service::policy::{Bundle, Sources};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let input = serde_json::json!({
        "tool": "run",
        "caller": {"tenant": "default", "transport": "cli", "client": "bench"},
        "request": {"language": "python", "code": "print(1)", "code_bytes": 8,
                    "command": null, "file": null, "args": [], "files": [], "env": [],
                    "limits": {}, "sandbox_id": null, "workdir": false},
        "profile": {"name": "python", "language": "python", "seccomp": "default",
                    "landlock": "best-effort", "network": "none", "ro_binds": [], "rw_binds": [],
                    "source": "builtin",
                    "limits": {"timeout_secs": 30.0, "memory_bytes": 536870912u64, "pids": 256, "cpus": 1.0}},
    });
    // The first load and decision of a fresh process: what `aisbx run` pays.
    let t = Instant::now();
    let cold = Bundle::parse(&Sources::default_bundle(), false).expect("default policy");
    let cold_load = t.elapsed();
    let t = Instant::now();
    assert!(cold.decide(&input).allowed);
    let cold_decision = t.elapsed();
    if std::env::var_os("POLICY_BENCH_COLD_ONLY").is_some() {
        // For profiling the start of a process: run this binary many times.
        println!("first load {cold_load:?}, first decision {cold_decision:?}");
        return;
    }
    let loads: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let b = Bundle::parse(&Sources::default_bundle(), false).expect("default policy");
            std::hint::black_box(&b);
            t.elapsed()
        })
        .collect();
    let bundle = Bundle::parse(&Sources::default_bundle(), false).expect("default policy");
    let decisions: Vec<Duration> = (0..5000)
        .map(|_| {
            let t = Instant::now();
            let d = bundle.decide(&input);
            assert!(d.allowed);
            std::hint::black_box(&d);
            t.elapsed()
        })
        .collect();
    println!(
        "default policy, fresh process: first load {cold_load:?}, first decision {cold_decision:?}"
    );
    println!(
        "default policy: load (once per process) median {:?}; decision (per request) median {:?}",
        median(loads),
        median(decisions)
    );
}
