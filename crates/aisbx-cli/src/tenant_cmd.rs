//! `aisbx tenant add|list|rm|rotate|revoke`: the tenants of the HTTP MCP server and
//! their bearer tokens (`tenants.toml` in the state directory holds their hashes).
//!
//! A new token is printed alone on stdout, once; everything else goes to stderr.
//! Exit status: 0, or 125 with one sentence on stderr.

use std::io::Write;

use aisbx_service::tenants;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Make a tenant and print its new bearer token, alone on stdout (shown only now).
    Add {
        /// Lowercase letters, digits, '-', '_' and '.' (up to 64).
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// List the tenants and their token ids (never tokens).
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a tenant; its tokens stop working at once.
    Rm {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Give a tenant a new token, printed alone on stdout; its other tokens stop
    /// working, unless --keep (then revoke them once clients moved over).
    Rotate {
        #[arg(value_name = "NAME")]
        name: String,
        /// Keep the tenant's current tokens valid.
        #[arg(long)]
        keep: bool,
    },
    /// Make a local user a tenant: its `aisbx` commands, its Unix-socket
    /// connections and a stdio server it starts use that tenant's sandboxes,
    /// snapshots and quotas (`default` maps it back).
    Map {
        #[arg(value_name = "UID")]
        uid: String,
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Show or set a tenant's quotas (`default` too); `none` removes one. A policy
    /// may lower them further (docs/POLICY.md).
    Quota {
        #[arg(value_name = "NAME")]
        name: String,
        /// Runs (and builds) going on at once.
        #[arg(long, value_name = "N|none")]
        runs: Option<String>,
        /// Persistent sandboxes.
        #[arg(long, value_name = "N|none")]
        sandboxes: Option<String>,
        /// Bytes of sandboxes and snapshots (e.g. 10G).
        #[arg(long, value_name = "SIZE|none")]
        storage: Option<String>,
        /// CPU seconds of runs over the last hour.
        #[arg(long, value_name = "N|none")]
        cpu_seconds_per_hour: Option<String>,
        /// Runs started over the last minute.
        #[arg(long, value_name = "N|none")]
        runs_per_minute: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token of a tenant, by the id `tenant list` shows.
    Revoke {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "TOKEN-ID")]
        id: String,
    },
}

fn fail(e: &tenants::TenantError) -> u8 {
    eprintln!("aisbx: {e}");
    125
}

/// Prints a new token alone on stdout.
fn print_token(name: &str, token: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{token}").and_then(|()| out.flush()).is_err() {
        eprintln!(
            "aisbx: the new token of '{name}' could not be printed (stdout is closed); run `aisbx tenant rotate {name}` to make another"
        );
        return 125;
    }
    0
}

/// A quota's new value: `None` to leave it, `Some(None)` to remove it.
fn quota_value(flag: &str, v: Option<&str>, size: bool) -> Result<Option<Option<u64>>, String> {
    let Some(v) = v else { return Ok(None) };
    if v == "none" {
        return Ok(Some(None));
    }
    let n = if size {
        crate::size::parse(v)?
    } else {
        v.parse::<u64>().map_err(|_| {
            format!("--{flag} {v}: give a whole number, or `none` to remove the quota")
        })?
    };
    Ok(Some(Some(n)))
}

fn print_quota(name: &str, q: &tenants::Quota, json: bool) {
    if json {
        crate::print_json(&serde_json::json!({"tenant": name, "quota": q}));
        return;
    }
    let show = |v: Option<u64>| v.map_or("none".to_string(), |n| n.to_string());
    outln!("tenant {name}");
    outln!("  concurrent_runs       {}", show(q.concurrent_runs));
    outln!("  sandboxes             {}", show(q.sandboxes));
    outln!("  storage_bytes         {}", show(q.storage_bytes));
    outln!("  cpu_seconds_per_hour  {}", show(q.cpu_seconds_per_hour));
    outln!("  runs_per_minute       {}", show(q.runs_per_minute));
}

pub fn run(cmd: TenantCmd) -> u8 {
    let home = aisbx_service::default_home();
    match cmd {
        TenantCmd::Quota {
            name,
            runs,
            sandboxes,
            storage,
            cpu_seconds_per_hour,
            runs_per_minute,
            json,
        } => {
            let parsed = (|| {
                Ok::<_, String>([
                    quota_value("runs", runs.as_deref(), false)?,
                    quota_value("sandboxes", sandboxes.as_deref(), false)?,
                    quota_value("storage", storage.as_deref(), true)?,
                    quota_value(
                        "cpu-seconds-per-hour",
                        cpu_seconds_per_hour.as_deref(),
                        false,
                    )?,
                    quota_value("runs-per-minute", runs_per_minute.as_deref(), false)?,
                ])
            })();
            let values = match parsed {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("aisbx: {e}");
                    return 125;
                }
            };
            let result = if values.iter().all(Option::is_none) {
                tenants::load(&home).and_then(|t| {
                    if t.exists(&name) {
                        Ok(t.quota(&name))
                    } else {
                        Err(tenants::TenantError::NoSuchTenant(name.clone()))
                    }
                })
            } else {
                tenants::set_quota(&home, &name, |q| {
                    let [a, b, c, d, e] = values;
                    let fields = [
                        &mut q.concurrent_runs,
                        &mut q.sandboxes,
                        &mut q.storage_bytes,
                        &mut q.cpu_seconds_per_hour,
                        &mut q.runs_per_minute,
                    ];
                    for (slot, v) in fields.into_iter().zip([a, b, c, d, e]) {
                        if let Some(v) = v {
                            *slot = v;
                        }
                    }
                })
            };
            match result {
                Ok(q) => {
                    print_quota(&name, &q, json);
                    0
                }
                Err(e) => fail(&e),
            }
        }
        TenantCmd::Add { name } => match tenants::add(&home, &name) {
            Ok(token) => {
                let code = print_token(&name, &token);
                if code == 0 {
                    eprintln!(
                        "aisbx: made the tenant '{name}'; its token (above) is shown only now: clients of `aisbx-mcp --http` send it as `Authorization: Bearer <token>`"
                    );
                }
                code
            }
            Err(e) => fail(&e),
        },
        TenantCmd::Rotate { name, keep } => match tenants::rotate(&home, &name, keep) {
            Ok(token) => {
                let code = print_token(&name, &token);
                if code == 0 {
                    eprintln!(
                        "aisbx: gave '{name}' a new token (above, shown only now){}",
                        if keep {
                            "; its other tokens still work until revoked"
                        } else {
                            "; its other tokens no longer work"
                        }
                    );
                }
                code
            }
            Err(e) => fail(&e),
        },
        TenantCmd::Revoke { name, id } => match tenants::revoke(&home, &name, &id) {
            Ok(()) => {
                eprintln!("aisbx: revoked the token {id} of '{name}'");
                0
            }
            Err(e) => fail(&e),
        },
        TenantCmd::Map { uid, name } => {
            let to = (name != tenants::DEFAULT_TENANT).then_some(name.as_str());
            match tenants::map_uid(&home, &uid, to) {
                Ok(()) => {
                    eprintln!("aisbx: uid {uid} is now the tenant '{name}'");
                    0
                }
                Err(e) => fail(&e),
            }
        }
        TenantCmd::Rm { name } => match tenants::remove(&home, &name) {
            Ok(()) => {
                eprintln!("aisbx: removed the tenant '{name}' and its tokens");
                0
            }
            Err(e) => fail(&e),
        },
        TenantCmd::List { json } => match tenants::load(&home) {
            Ok(t) => {
                if json {
                    let v: Vec<serde_json::Value> = t
                        .tenants
                        .iter()
                        .map(|x| {
                            serde_json::json!({
                                "name": x.name,
                                "created": x.created,
                                "index": t.settings.get(&x.name).and_then(|s| s.index),
                                "quota": t.quota(&x.name),
                                "uids": t.uids.iter().filter(|(_, v)| **v == x.name)
                                    .map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                                "tokens": x.tokens.iter().map(|k| serde_json::json!({
                                    "id": k.id, "created": k.created,
                                })).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    crate::print_json(&v);
                } else if t.tenants.is_empty() {
                    eprintln!("aisbx: no tenants; `aisbx tenant add NAME` makes one");
                } else {
                    outln!("{:<24} {:<24} TOKENS", "NAME", "CREATED");
                    for x in &t.tenants {
                        let ids: Vec<&str> = x.tokens.iter().map(|k| k.id.as_str()).collect();
                        outln!(
                            "{:<24} {:<24} {}",
                            x.name,
                            x.created,
                            if ids.is_empty() {
                                "(none)".to_string()
                            } else {
                                ids.join(", ")
                            }
                        );
                    }
                }
                0
            }
            Err(e) => fail(&e),
        },
    }
}
