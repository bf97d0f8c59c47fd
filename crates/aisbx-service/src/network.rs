//! A run's network (docs/NETWORK.md): the allowlist a profile's `[network]`
//! gives, with its package indexes resolved from the host's own pip and npm
//! configuration; the environment, `/etc` files and download cache of a run that
//! reaches the network through aisbx's proxy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ServiceError;
use crate::profile::NetworkSettings;

/// The port the forwarder listens on inside the sandbox (`127.0.0.1` only).
pub const PROXY_PORT: u16 = 3128;
/// The user name in the proxy URL; the password is the run's secret.
pub const PROXY_USER: &str = "aisbx";

/// Where the sandbox's programs find the CA certificates, in the host's layout.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The network part of a prepared run.
#[derive(Debug, Clone)]
pub struct NetPlan {
    /// The final allowlist: the profile's entries and its package indexes.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub max_connections: u32,
    pub max_egress: u64,
    /// The run's proxy password (`Proxy-Authorization`), in the program's environment.
    pub secret: String,
    /// The tenant whose download cache the run uses.
    pub tenant: String,
    /// The request id of the run's own audit line, which its connection events
    /// carry as `run_id` (a fresh one for the service's own runs).
    pub audit_id: Option<String>,
}

/// The single place where a run's final allowlist is computed: the profile's
/// `allow`, plus the hosts of the package indexes it names, as the host's pip
/// and npm are configured now. (A policy's obligations would narrow it here.)
pub fn final_allowlist(
    settings: &NetworkSettings,
    profile: &str,
    host_path: &str,
) -> Result<(Vec<String>, Vec<String>), ServiceError> {
    let mut allow = settings.allow.clone();
    for eco in &settings.packages {
        let hosts = match eco.as_str() {
            "python" => pip_index_hosts(host_path),
            "node" => npm_registry_hosts(host_path),
            other => Err(format!("'{other}' is not a package index aisbx knows")),
        }
        .map_err(|e| {
            ServiceError::Refused(format!(
                "profile '{profile}': network.packages \"{eco}\": {e}"
            ))
        })?;
        for h in hosts {
            if !allow.contains(&h) {
                allow.push(h);
            }
        }
    }
    Ok((allow, settings.deny.clone()))
}

/// A run's destinations after the policy's `network` obligation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrowed {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// The run's entries the policy's `allow` does not cover.
    pub dropped: Vec<String>,
}

/// The allowlist and denylist after the policy's `network` obligation: an
/// `allow` list keeps only the run's entries it covers (the others are
/// dropped), and its `deny` entries are added. Narrows, never widens.
pub fn narrow(
    allow: Vec<String>,
    mut deny: Vec<String>,
    ob: &crate::policy::NetworkObligation,
) -> Result<Narrowed, ServiceError> {
    let bad = |what: &str, r: &str, e: aisbx_net::NetError| {
        ServiceError::Refused(format!(
            "refused by policy: its network.{what} entry \"{r}\" is not a destination: {e}"
        ))
    };
    for d in &ob.deny {
        d.parse::<aisbx_net::Rule>()
            .map_err(|e| bad("deny", d, e))?;
        if !deny.contains(d) {
            deny.push(d.clone());
        }
    }
    let Some(limit) = &ob.allow else {
        return Ok(Narrowed {
            allow,
            deny,
            dropped: Vec::new(),
        });
    };
    let rules = limit
        .iter()
        .map(|r| r.parse().map_err(|e| bad("allow", r, e)))
        .collect::<Result<Vec<aisbx_net::Rule>, _>>()?;
    let within = aisbx_net::NetPolicy::new(rules, Vec::new());
    let (kept, dropped) = allow.into_iter().partition(|e| {
        e.parse::<aisbx_net::Rule>()
            .is_ok_and(|rule| within.covers(&rule))
    });
    Ok(Narrowed {
        allow: kept,
        deny,
        dropped,
    })
}

/// `scheme://[user@]host[:port]/...` → the allowlist entry for it: `host` when
/// the port is the scheme's default (80, 443), else `host:port`. `None` for
/// anything that is not an http(s) URL with a host.
pub fn url_rule(url: &str) -> Option<String> {
    let url = url.trim().trim_matches(|c| c == '\'' || c == '"');
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if hostport.starts_with('[') {
        let end = hostport.find(']')?;
        let host = &hostport[..=end];
        match &hostport[end + 1..] {
            "" => (host, default),
            p => (host, p.strip_prefix(':')?.parse().ok()?),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (hostport, default),
        }
    };
    let host = host.to_ascii_lowercase();
    crate::profile::schema::check_host_rule(&host).ok()?;
    Some(if port == 80 || port == 443 {
        host
    } else {
        format!("{host}:{port}")
    })
}

/// Run a host tool for its configuration, with a time limit; its stdout.
fn host_output(program: &str, args: &[&str], host_path: &str) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .env("PATH", host_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run the host's {program}: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the host's {program} did not answer within 20 s"));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading the host's {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("the host's {program} {} failed", args.join(" ")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The hosts pip installs from: `PIP_INDEX_URL` / `PIP_EXTRA_INDEX_URL`, else
/// pip's own configuration (`pip config list`: its files and environment), else
/// pip's built-in default index and the host its files come from, as the
/// host's pip reports them.
pub fn pip_index_hosts(host_path: &str) -> Result<Vec<String>, String> {
    let mut urls: Vec<String> = Vec::new();
    for var in ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"] {
        if let Ok(v) = std::env::var(var) {
            urls.extend(v.split_whitespace().map(str::to_string));
        }
    }
    if urls.is_empty() {
        let listed = host_output("python3", &["-m", "pip", "config", "list"], host_path)?;
        urls = pip_config_urls(&listed);
    }
    if urls.is_empty() {
        let code = "from pip._internal.models.index import PyPI; print(PyPI.simple_url); print('https://' + PyPI.file_storage_domain + '/')";
        urls = host_output("python3", &["-c", code], host_path)?
            .lines()
            .map(str::to_string)
            .collect();
    }
    hosts_of(&urls, "pip")
}

/// `index-url` and `extra-index-url` values from `pip config list`
/// (`global.index-url='https://...'`; extra URLs may be several, on lines).
pub fn pip_config_urls(listed: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for line in listed.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let name = key.rsplit('.').next().unwrap_or_default();
        if name == "index-url" || name == "extra-index-url" {
            let v = value.trim().trim_matches('\'');
            urls.extend(v.split_whitespace().map(str::to_string));
        }
    }
    urls
}

/// The host npm installs from: `npm_config_registry`, else `npm config get
/// registry` on the host.
pub fn npm_registry_hosts(host_path: &str) -> Result<Vec<String>, String> {
    let from_env = ["npm_config_registry", "NPM_CONFIG_REGISTRY"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    let url = match from_env {
        Some(u) => u,
        None => host_output("npm", &["config", "get", "registry"], host_path)?,
    };
    hosts_of(&[url.trim().to_string()], "npm")
}

fn hosts_of(urls: &[String], tool: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for u in urls {
        let rule = url_rule(u)
            .ok_or_else(|| format!("the host's {tool} names '{u}', which is not an http(s) URL"))?;
        if !out.contains(&rule) {
            out.push(rule);
        }
    }
    if out.is_empty() {
        return Err(format!("the host's {tool} names no index"));
    }
    Ok(out)
}

/// The host's CA bundle, if it has one of the usual ones.
pub fn ca_bundle() -> Option<PathBuf> {
    CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The environment of a run with network: every common proxy variable, the CA
/// bundle, and the download caches.
pub fn env(secret: &str, ca: Option<&Path>, cache: Option<&Path>) -> Vec<(String, String)> {
    let url = format!("http://{PROXY_USER}:{secret}@127.0.0.1:{PROXY_PORT}");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| env.push((k.to_string(), v.to_string()));
    for k in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "PIP_PROXY",
        "npm_config_proxy",
        "npm_config_https_proxy",
        "GRPC_PROXY",
        "grpc_proxy",
    ] {
        set(k, &url);
    }
    set("NO_PROXY", "127.0.0.1,localhost");
    set("no_proxy", "127.0.0.1,localhost");
    set("NODE_USE_ENV_PROXY", "1");
    if let Some(ca) = ca {
        let ca = ca.to_string_lossy();
        for k in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "PIP_CERT",
            "NODE_EXTRA_CA_CERTS",
            "CURL_CA_BUNDLE",
            "npm_config_cafile",
        ] {
            set(k, &ca);
        }
    }
    if let Some(cache) = cache {
        set("PIP_CACHE_DIR", &cache.join("pip").to_string_lossy());
        set("npm_config_cache", &cache.join("npm").to_string_lossy());
    }
    env
}

/// `/etc` files that differ for a run with network: the stub resolver on
/// `127.0.0.1` (the forwarder), and name lookups through it.
pub fn etc_files(files: &mut [(String, Vec<u8>)]) {
    for (name, content) in files.iter_mut() {
        match name.as_str() {
            "resolv.conf" => {
                *content = b"# aisbx: names allowed by the run's profile resolve here\nnameserver 127.0.0.1\noptions edns0\n".to_vec()
            }
            "nsswitch.conf" => {
                *content = b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec()
            }
            _ => {}
        }
    }
}

/// Where the tenant's download cache is (`$AISBX_HOME/cache/<tenant>/`); made
/// by [`tenant_cache`] when a run starts, never by a dry run.
pub fn cache_dir(home: &Path, tenant: &str) -> Result<PathBuf, ServiceError> {
    if !crate::profile::schema::valid_name(tenant) {
        return Err(ServiceError::Internal(format!(
            "the tenant name '{tenant}' cannot name a cache directory"
        )));
    }
    Ok(home.join("cache").join(tenant))
}

/// The tenant's download cache (`$AISBX_HOME/cache/<tenant>/`, with `pip` and
/// `npm` in it), made when missing.
pub fn tenant_cache(home: &Path, tenant: &str) -> Result<PathBuf, ServiceError> {
    let dir = cache_dir(home, tenant)?;
    for sub in ["pip", "npm"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
            ServiceError::Internal(format!(
                "cannot create the download cache {}: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(dir)
}

/// A new proxy secret: 128 random bits, hex.
pub fn new_secret() -> Result<String, ServiceError> {
    crate::tenants::random_bytes::<16>()
        .map(hex::encode)
        .map_err(|e| ServiceError::Internal(format!("cannot make the run's proxy secret: {e}")))
}

/// A run's private socket directory (`0700`, a fresh random name under the
/// temporary directory: socket paths must stay short), removed when dropped.
pub struct SocketDir(PathBuf);

impl SocketDir {
    pub fn new() -> Result<SocketDir, ServiceError> {
        let base = std::env::temp_dir();
        let template = base.join("aisbx-net-XXXXXX");
        let mut bytes = template.into_os_string().into_encoded_bytes();
        bytes.push(0);
        // SAFETY: mkdtemp fills in the X's of our NUL-terminated buffer.
        let p = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(ServiceError::Internal(format!(
                "cannot create the run's network directory in {}: {}",
                base.display(),
                std::io::Error::last_os_error()
            )));
        }
        bytes.pop();
        // SAFETY: the bytes came from an OsString and mkdtemp only replaced X's
        // with ASCII.
        let path =
            PathBuf::from(unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(bytes) });
        Ok(SocketDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Start the run's proxy with its final allowlist and caps, in a new socket
/// directory.
pub fn start_proxy(plan: &NetPlan) -> Result<(aisbx_net::Proxy, SocketDir), ServiceError> {
    let rules = |list: &[String]| -> Result<Vec<aisbx_net::Rule>, ServiceError> {
        list.iter()
            .map(|r| {
                r.parse()
                    .map_err(|e: aisbx_net::NetError| ServiceError::Refused(e.to_string()))
            })
            .collect()
    };
    let policy = aisbx_net::NetPolicy {
        allow: rules(&plan.allow)?,
        deny: rules(&plan.deny)?,
        max_connections: plan.max_connections,
        max_egress_bytes: plan.max_egress,
    };
    let dir = SocketDir::new()?;
    let proxy = aisbx_net::Proxy::start(dir.path(), policy, &plan.secret).map_err(|e| {
        ServiceError::Internal(format!("cannot start the run's network proxy: {e}"))
    })?;
    Ok((proxy, dir))
}

/// One audit event per connection of a run: the run, destination, the address
/// dialled, allowed or the rule that refused it, bytes each way, duration.
pub(crate) fn audit(
    log: &crate::audit::AuditLog,
    tenant: &str,
    run_id: Option<String>,
    report: &aisbx_net::NetReport,
) {
    let run = run_id.unwrap_or_else(|| crate::new_id("run"));
    for c in &report.connections {
        let entry = crate::audit::AuditEntry {
            request_id: crate::new_id("conn"),
            front_end: "net".into(),
            client: Some(tenant.to_string()),
            tenant: tenant.to_string(),
            tool: "connect".into(),
            args_digest: crate::audit::digest_args(
                &serde_json::json!({"host": c.host, "port": c.port}),
            ),
            decision: if c.allowed { "allow" } else { "deny" }.into(),
            reason: c.reason.clone(),
            result: serde_json::json!({
                "run_id": run,
                "host": c.host,
                "port": c.port,
                "addr": c.addr,
                "allowed": c.allowed,
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "duration_ms": c.duration_ms,
            }),
        };
        if let Err(e) = log.append(entry) {
            eprintln!("aisbx: warning: could not append to the audit log: {e}");
            return;
        }
    }
    if report.records_dropped > 0 {
        let _ = log.append(crate::audit::AuditEntry {
            request_id: crate::new_id("conn"),
            front_end: "net".into(),
            client: Some(tenant.to_string()),
            tenant: tenant.to_string(),
            tool: "connect".into(),
            args_digest: crate::audit::digest_args(&serde_json::json!({})),
            decision: "error".into(),
            reason: Some(format!(
                "{} more connections were not recorded",
                report.records_dropped
            )),
            result: serde_json::json!({"run_id": run, "records_dropped": report.records_dropped}),
        });
    }
}

/// Whether filtered egress works here (`aisbx doctor`): a throwaway proxy that
/// allows nothing, and a sandbox whose program asks it for a tunnel through the
/// forwarder without credentials; the proxy's 407 proves the whole path. The
/// answer, in words, and whether it works.
pub fn probe() -> (bool, String) {
    let Some(bash) = ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .find(|b| Path::new(b).exists())
    else {
        return (
            false,
            "not checked: the probe needs bash on the host".into(),
        );
    };
    let plan = NetPlan {
        allow: Vec::new(),
        deny: Vec::new(),
        max_connections: 1,
        max_egress: 1 << 20,
        secret: match new_secret() {
            Ok(s) => s,
            Err(e) => return (false, e.to_string()),
        },
        tenant: crate::DEFAULT_TENANT.into(),
        audit_id: None,
    };
    let (proxy, dir) = match start_proxy(&plan) {
        Ok(p) => p,
        Err(e) => return (false, e.to_string()),
    };
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{PROXY_PORT} && printf 'CONNECT doctor.invalid:443 HTTP/1.1\\r\\nHost: doctor.invalid:443\\r\\n\\r\\n' >&3 && head -c 12 <&3"
    );
    let spec = aisbx_jail::Spec {
        argv: vec![bash.into(), "-c".into(), script],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/".into(),
        ro_binds: ["/usr", "/bin", "/lib", "/lib64"]
            .iter()
            .map(PathBuf::from)
            .collect(),
        rw_binds: Vec::new(),
        etc_files: Vec::new(),
        code_files: Vec::new(),
        workspace: aisbx_jail::Workspace::Tmpfs {
            size_bytes: 1 << 20,
        },
        workspace_files: Vec::new(),
        limits: aisbx_jail::Limits {
            wall: Duration::from_secs(10),
            memory_bytes: 128 << 20,
            pids: 16,
            cpus: 1.0,
            nofile: 64,
            tmp_bytes: 1 << 20,
            output_bytes: 4096,
        },
        stdin: aisbx_jail::Stdin::Null,
        hostname: "aisbx".into(),
        landlock: aisbx_jail::Enforcement::BestEffort,
        seccomp: aisbx_jail::SeccompLevel::Default,
        require_cgroups: false,
        net: Some(aisbx_jail::NetRelay {
            dir: dir.path().to_path_buf(),
            port: PROXY_PORT,
        }),
        host_id: None,
    };
    let outcome = crate::helper::run_jail(
        &spec,
        &mut crate::NullSink,
        &crate::CancelToken::default(),
        None,
    );
    let report = proxy.finish();
    drop(dir);
    match outcome {
        Ok(o) if o.stdout.starts_with(b"HTTP/1.1 407") && !report.connections.is_empty() => (
            true,
            "works: a sandbox reached its own proxy through the forwarder".into(),
        ),
        Ok(o) => (
            false,
            format!(
                "does not work: the sandbox's request did not reach the proxy ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Err(e) => (false, format!("does not work: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_urls_become_allowlist_entries() {
        assert_eq!(
            url_rule("https://pypi.org/simple").as_deref(),
            Some("pypi.org")
        );
        assert_eq!(
            url_rule("https://user:pw@Mirror.Example.org:8443/pypi/simple/").as_deref(),
            Some("mirror.example.org:8443")
        );
        assert_eq!(
            url_rule("http://10.0.0.5/simple").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            url_rule("http://[2001:db8::1]:3141/").as_deref(),
            Some("[2001:db8::1]:3141")
        );
        assert_eq!(
            url_rule("'https://registry.example.com/'").as_deref(),
            Some("registry.example.com")
        );
        for bad in [
            "file:///opt/wheels",
            "/opt/wheels",
            "https://",
            "https://a b/",
            "ftp://x.org/",
        ] {
            assert_eq!(url_rule(bad), None, "{bad}");
        }
    }

    #[test]
    fn pip_config_list_is_read() {
        let listed = ":env:.cert='/etc/ssl/certs/ca-certificates.crt'\n:env:.find-links='/opt/wheels'\nglobal.index-url='https://mirror.example.org/simple'\nuser.extra-index-url='https://a.example.org/simple https://b.example.org:8080/simple'\n";
        assert_eq!(
            pip_config_urls(listed),
            [
                "https://mirror.example.org/simple",
                "https://a.example.org/simple",
                "https://b.example.org:8080/simple"
            ]
        );
        assert!(pip_config_urls(":env:.cert='/x'\n").is_empty());
        assert_eq!(
            hosts_of(&pip_config_urls(listed), "pip").unwrap(),
            ["mirror.example.org", "a.example.org", "b.example.org:8080"]
        );
        assert!(hosts_of(&["file:///x".into()], "pip").is_err());
    }

    #[test]
    fn the_environment_names_the_proxy_and_the_caches() {
        let env = env(
            "s3cret",
            Some(Path::new("/etc/ssl/certs/ca-certificates.crt")),
            Some(Path::new("/c")),
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("HTTPS_PROXY"),
            Some("http://aisbx:s3cret@127.0.0.1:3128")
        );
        assert_eq!(get("all_proxy"), get("HTTP_PROXY"));
        assert_eq!(get("NO_PROXY"), Some("127.0.0.1,localhost"));
        assert_eq!(get("PIP_CACHE_DIR"), Some("/c/pip"));
        assert_eq!(
            get("REQUESTS_CA_BUNDLE"),
            Some("/etc/ssl/certs/ca-certificates.crt")
        );
        let mut files = vec![
            ("resolv.conf".to_string(), Vec::new()),
            ("hosts".into(), b"h".to_vec()),
        ];
        etc_files(&mut files);
        assert!(String::from_utf8_lossy(&files[0].1).contains("nameserver 127.0.0.1"));
        assert_eq!(files[1].1, b"h");
    }
}
