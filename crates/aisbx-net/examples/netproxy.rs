//! Serve one proxy from the command line, as a run would get it (used by
//! bench/net_latency.py, handy for trying rules by hand):
//!
//!     netproxy DIR SECRET RULE...
//!
//! starts the proxy in DIR (which must exist; keep it 0700), prints "ready" once both
//! sockets listen, serves until standard input closes, then prints the report as JSON.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use aisbx_net::{NetPolicy, Proxy, Rule};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: netproxy DIR SECRET RULE...");
        return ExitCode::from(2);
    }
    let dir = PathBuf::from(&args[0]);
    let mut allow = Vec::new();
    for r in &args[2..] {
        match r.parse::<Rule>() {
            Ok(rule) => allow.push(rule),
            Err(e) => {
                eprintln!("netproxy: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let proxy = match Proxy::start(&dir, NetPolicy::new(allow, Vec::new()), &args[1]) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("netproxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let report = proxy.finish();
    match serde_json::to_string(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("netproxy: could not print the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
