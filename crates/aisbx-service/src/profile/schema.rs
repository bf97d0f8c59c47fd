//! Profile files: parsing and checking against the documented schema
//! (docs/PROFILES.md). Every error is collected, with its file, line and column;
//! an unknown key gets a did-you-mean. A checked file becomes a [`Layer`]: its
//! values flattened to dotted paths (`limits.timeout`, `env.FOO`), ready to merge.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Source;

/// One problem in a profile file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    /// The file (`builtin:python.toml` for an embedded one).
    pub file: String,
    /// 1-based; 0 when the problem is not tied to a line.
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        }
    }
}

/// A checked value, normalised (durations in seconds, sizes in bytes).
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Text(String),
    Int(u64),
    Float(f64),
    /// A list that replaces the inherited one.
    List(Vec<String>),
    /// `{ append = [...] }`: added to the end of the inherited list.
    Append(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub val: Val,
    pub line: usize,
}

/// One profile file, checked.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub source: Source,
    /// Where it came from, for messages.
    pub file: String,
    pub path: Option<PathBuf>,
    /// Parents, with the line that names each.
    pub extends: Vec<(String, usize)>,
    pub values: BTreeMap<String, Entry>,
    pub text: String,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    /// A profile or language name.
    Name,
    Choice(&'static [&'static str]),
    Seconds,
    Bytes(u64, u64),
    Count(u64, u64),
    Cores,
    /// `extends`: a list of profile names (no append form).
    Names,
    List,
    /// Host paths bound read-only.
    RoPaths,
    /// Host directories bound read-write.
    RwPaths,
    /// Host paths opened to the host-path check (`[perimeter] allow`).
    AllowPaths,
    /// Destinations (`network.allow`, `network.deny`): `host`, `*.domain`,
    /// either with `:port`, or an IP literal (`10.0.0.5`, `[2001:db8::1]:443`).
    HostRules,
    /// Package indexes by ecosystem ([`PACKAGE_INDEXES`]).
    PackageIndexes,
    /// A table of environment variables.
    Env,
}

#[derive(Debug, Clone, Copy)]
enum Node {
    Leaf(Kind),
    Table(&'static [(&'static str, Node)]),
}

const MIB: u64 = 1 << 20;

const RUNTIME: &[(&str, Node)] = &[
    ("language", Node::Leaf(Kind::Name)),
    ("aliases", Node::Leaf(Kind::List)),
    ("interpreters", Node::Leaf(Kind::List)),
    ("requires", Node::Leaf(Kind::List)),
    ("feed", Node::Leaf(Kind::Choice(&["file", "none"]))),
    ("file_name", Node::Leaf(Kind::Text)),
    ("run", Node::Leaf(Kind::List)),
    ("run_code", Node::Leaf(Kind::List)),
    ("extensions", Node::Leaf(Kind::List)),
    ("markers", Node::Leaf(Kind::List)),
    ("hints", Node::Leaf(Kind::List)),
    ("env", Node::Leaf(Kind::Env)),
];

const LIMITS: &[(&str, Node)] = &[
    ("timeout", Node::Leaf(Kind::Seconds)),
    ("memory", Node::Leaf(Kind::Bytes(4 * MIB, 1 << 40))),
    ("pids", Node::Leaf(Kind::Count(2, 1_000_000))),
    ("cpus", Node::Leaf(Kind::Cores)),
    ("nofile", Node::Leaf(Kind::Count(16, 1 << 20))),
    ("workspace", Node::Leaf(Kind::Bytes(MIB, 1 << 40))),
    ("tmp", Node::Leaf(Kind::Bytes(MIB, 1 << 40))),
    ("output", Node::Leaf(Kind::Bytes(1 << 10, 1 << 30))),
];

const NETWORK: &[(&str, Node)] = &[
    ("mode", Node::Leaf(Kind::Choice(&["none", "allowlist"]))),
    ("allow", Node::Leaf(Kind::HostRules)),
    ("deny", Node::Leaf(Kind::HostRules)),
    ("packages", Node::Leaf(Kind::PackageIndexes)),
    ("max_connections", Node::Leaf(Kind::Count(1, 4096))),
    ("max_egress", Node::Leaf(Kind::Bytes(MIB, 1 << 40))),
];

/// The symbolic entries of `network.packages`: package indexes resolved at run
/// time from the host's own configuration (crate::network).
pub const PACKAGE_INDEXES: &[&str] = &["python", "node"];

const FILESYSTEM: &[(&str, Node)] = &[
    ("ro_binds", Node::Leaf(Kind::RoPaths)),
    ("rw_binds", Node::Leaf(Kind::RwPaths)),
];

const PERIMETER: &[(&str, Node)] = &[("allow", Node::Leaf(Kind::AllowPaths))];

const SECURITY: &[(&str, Node)] = &[
    ("seccomp", Node::Leaf(Kind::Choice(&["default", "dev"]))),
    (
        "landlock",
        Node::Leaf(Kind::Choice(&["best-effort", "required"])),
    ),
];

const TOP: &[(&str, Node)] = &[
    ("name", Node::Leaf(Kind::Name)),
    ("description", Node::Leaf(Kind::Text)),
    ("extends", Node::Leaf(Kind::Names)),
    ("runtime", Node::Table(RUNTIME)),
    ("limits", Node::Table(LIMITS)),
    ("network", Node::Table(NETWORK)),
    ("filesystem", Node::Table(FILESYSTEM)),
    ("env", Node::Leaf(Kind::Env)),
    ("security", Node::Table(SECURITY)),
    ("perimeter", Node::Table(PERIMETER)),
];

/// Every dotted path the schema knows, in documentation order (for display).
pub fn known_paths() -> Vec<String> {
    let mut out = Vec::new();
    for (k, n) in TOP {
        match n {
            Node::Leaf(_) => out.push(k.to_string()),
            Node::Table(t) => out.extend(t.iter().map(|(s, _)| format!("{k}.{s}"))),
        }
    }
    out
}

/// A profile or language name: lowercase letters, digits, `.`, `_`, `-`; 1..=64.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

pub fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Ctx<'a> {
    file: &'a str,
    /// Whether the file may widen the host-path check (a user profile): then
    /// where its binds lead is checked at run time only, with its allowances.
    may_widen: bool,
    text: &'a str,
    diags: Vec<Diag>,
    values: BTreeMap<String, Entry>,
    extends: Vec<(String, usize)>,
}

impl Ctx<'_> {
    fn pos(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn err(&mut self, span: std::ops::Range<usize>, message: String) {
        let (line, col) = self.pos(span.start);
        self.diags.push(Diag {
            file: self.file.to_string(),
            line,
            col,
            message,
        });
    }

    fn put(&mut self, path: String, span: std::ops::Range<usize>, val: Val) {
        let (line, _) = self.pos(span.start);
        self.values.insert(path, Entry { val, line });
    }
}

/// Parse and check one profile file. `stem` is the name its file name gives it.
pub fn parse(
    text: &str,
    stem: &str,
    source: Source,
    file: &str,
    path: Option<PathBuf>,
) -> Result<Layer, Vec<Diag>> {
    let mut ctx = Ctx {
        file,
        may_widen: source == Source::User,
        text,
        diags: Vec::new(),
        values: BTreeMap::new(),
        extends: Vec::new(),
    };
    if !valid_name(stem) {
        ctx.diags.push(Diag {
            file: file.to_string(),
            line: 0,
            col: 0,
            message: format!(
                "'{stem}' is not a valid profile name: name the file with lowercase letters, digits, '.', '_' or '-' and end it in .toml"
            ),
        });
    }
    let (table, errors) = DeTable::parse_recoverable(text);
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().replace('\n', " ");
        ctx.err(span, format!("not valid TOML: {msg}"));
    }
    walk(table.get_ref(), TOP, "", &mut ctx);
    if let Some(Entry {
        val: Val::Text(n),
        line,
    }) = ctx.values.get("name")
        && n != stem
    {
        let line = *line;
        ctx.diags.push(Diag {
            file: file.to_string(),
            line,
            col: 1,
            message: format!(
                "name = \"{n}\" does not match the file name: a profile is named by its file, so rename the file to {n}.toml or drop the name"
            ),
        });
    }
    if ctx.diags.is_empty() {
        Ok(Layer {
            name: stem.to_string(),
            source,
            file: file.to_string(),
            path,
            extends: ctx.extends,
            values: ctx.values,
            text: text.to_string(),
        })
    } else {
        ctx.diags.sort_by_key(|d| (d.line, d.col));
        Err(ctx.diags)
    }
}

fn walk(table: &DeTable<'_>, schema: &[(&str, Node)], prefix: &str, ctx: &mut Ctx<'_>) {
    for (k, v) in table.iter() {
        let key: &str = k.get_ref();
        let Some((_, node)) = schema.iter().find(|(n, _)| *n == key) else {
            let section = if prefix.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in [{prefix}]")
            };
            let mut msg = format!("unknown key '{key}' {section}");
            if let Some(s) = suggest(key, schema.iter().map(|(n, _)| *n)) {
                msg.push_str(&format!("; did you mean '{s}'?"));
            } else if let Some(p) = elsewhere(key) {
                msg.push_str(&format!("; '{key}' belongs in [{p}]"));
            } else {
                let names: Vec<&str> = schema.iter().map(|(n, _)| *n).collect();
                msg.push_str(&format!(" (known: {})", names.join(", ")));
            }
            ctx.err(k.span(), msg);
            continue;
        };
        let path = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        match node {
            Node::Table(sub) => match v.get_ref() {
                DeValue::Table(t) => walk(t, sub, &path, ctx),
                other => ctx.err(
                    v.span(),
                    format!(
                        "{path} must be a table ([{path}]), not {}",
                        other.type_str()
                    ),
                ),
            },
            Node::Leaf(kind) => leaf(*kind, &path, v, ctx),
        }
    }
}

/// A key that exists in another section (`timeout` at the top → `limits`).
fn elsewhere(key: &str) -> Option<&'static str> {
    TOP.iter().find_map(|(sec, n)| match n {
        Node::Table(t) if t.iter().any(|(k, _)| *k == key) => Some(*sec),
        _ => None,
    })
}

fn leaf(kind: Kind, path: &str, v: &Spanned<DeValue<'_>>, ctx: &mut Ctx<'_>) {
    let span = v.span();
    let val = v.get_ref();
    match kind {
        Kind::Text => match val.as_str() {
            Some(s) => ctx.put(path.into(), span, Val::Text(s.to_string())),
            None => ctx.err(span, expected(path, "a string", val)),
        },
        Kind::Name => match val.as_str() {
            Some(s) if valid_name(s) => ctx.put(path.into(), span, Val::Text(s.to_string())),
            Some(s) => ctx.err(
                span,
                format!(
                    "{path}: '{s}' is not a valid name (lowercase letters, digits, '.', '_', '-')"
                ),
            ),
            None => ctx.err(span, expected(path, "a string", val)),
        },
        Kind::Choice(choices) => match val.as_str() {
            Some(s) if choices.contains(&s) => ctx.put(path.into(), span, Val::Text(s.into())),
            Some(s) => {
                let mut msg = format!(
                    "{path}: '{s}' is not one of {}",
                    choices
                        .iter()
                        .map(|c| format!("\"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Some(sug) = suggest(s, choices.iter().copied()) {
                    msg.push_str(&format!("; did you mean \"{sug}\"?"));
                }
                ctx.err(span, msg);
            }
            None => ctx.err(span, expected(path, "a string", val)),
        },
        Kind::Seconds => {
            let secs = match val {
                DeValue::Integer(_) | DeValue::Float(_) => number(val),
                DeValue::String(s) => parse_duration(s),
                _ => None,
            };
            match secs {
                Some(t) if t > 0.0 && t <= 86_400.0 => ctx.put(path.into(), span, Val::Float(t)),
                Some(t) => ctx.err(
                    span,
                    format!(
                        "{path}: {t} s is out of range: give more than 0 and at most 86400 seconds"
                    ),
                ),
                None => ctx.err(
                    span,
                    format!(
                        "{path} must be a duration such as 30, \"30s\", \"500ms\", \"5m\" or \"1h\""
                    ),
                ),
            }
        }
        Kind::Bytes(min, max) => {
            let b = match val {
                DeValue::Integer(_) => number(val).filter(|n| *n >= 0.0).map(|n| n as u64),
                DeValue::String(s) => parse_size(s),
                _ => None,
            };
            match b {
                Some(b) if (min..=max).contains(&b) => ctx.put(path.into(), span, Val::Int(b)),
                Some(b) => ctx.err(span, format!("{path}: {} is out of range: give {} to {}", human_bytes(b), human_bytes(min), human_bytes(max))),
                None => ctx.err(span, format!("{path} must be a size such as \"512M\", \"1G\", \"64K\" or a number of bytes")),
            }
        }
        Kind::Count(min, max) => match number(val) {
            Some(n) if matches!(val, DeValue::Integer(_)) && n >= min as f64 && n <= max as f64 => {
                ctx.put(path.into(), span, Val::Int(n as u64))
            }
            Some(n) if matches!(val, DeValue::Integer(_)) => ctx.err(
                span,
                format!("{path}: {n} is out of range: give {min} to {max}"),
            ),
            _ => ctx.err(span, expected(path, "a whole number", val)),
        },
        Kind::Cores => match number(val) {
            Some(c) if (0.01..=1024.0).contains(&c) => ctx.put(path.into(), span, Val::Float(c)),
            Some(c) => ctx.err(
                span,
                format!("{path}: {c} is out of range: give 0.01 to 1024"),
            ),
            None => ctx.err(
                span,
                expected(path, "a number of CPUs such as 1 or 0.5", val),
            ),
        },
        Kind::Names => match val {
            DeValue::Array(a) => {
                for item in a.iter() {
                    match item.get_ref().as_str() {
                        Some(s) if valid_name(s) => {
                            let (line, _) = ctx.pos(item.span().start);
                            ctx.extends.push((s.to_string(), line));
                        }
                        Some(s) => ctx.err(
                            item.span(),
                            format!("extends: '{s}' is not a valid profile name"),
                        ),
                        None => ctx.err(
                            item.span(),
                            expected("each entry of extends", "a string", item.get_ref()),
                        ),
                    }
                }
            }
            _ => ctx.err(span, expected(path, "a list of profile names", val)),
        },
        Kind::List
        | Kind::RoPaths
        | Kind::RwPaths
        | Kind::AllowPaths
        | Kind::HostRules
        | Kind::PackageIndexes => {
            let Some((items, append)) = string_list(path, v, ctx) else {
                return;
            };
            match kind {
                Kind::RoPaths | Kind::RwPaths | Kind::AllowPaths => {
                    for (s, sp) in &items {
                        if let Err(e) = check_bind(s) {
                            ctx.err(sp.clone(), format!("{path}: {e}"));
                        } else if !ctx.may_widen && !matches!(kind, Kind::AllowPaths) {
                            // Nothing can widen the check for this file: say now.
                            let perimeter =
                                crate::hostpath::Perimeter::for_caller(&crate::default_home());
                            if let Err(e) = crate::hostpath::check(
                                Path::new(s),
                                crate::hostpath::Use::Request,
                                &perimeter,
                            ) {
                                ctx.err(sp.clone(), format!("{path}: {e}"));
                            }
                        }
                    }
                }
                Kind::HostRules => {
                    for (s, sp) in &items {
                        if let Err(e) = check_host_rule(s) {
                            ctx.err(sp.clone(), format!("{path}: {e}"));
                        }
                    }
                }
                Kind::PackageIndexes => {
                    for (s, sp) in &items {
                        if !PACKAGE_INDEXES.contains(&s.as_str()) {
                            let mut msg = format!(
                                "{path}: '{s}' is not a package index aisbx knows (known: {})",
                                PACKAGE_INDEXES.join(", ")
                            );
                            if let Some(sug) = suggest(s, PACKAGE_INDEXES.iter().copied()) {
                                msg.push_str(&format!("; did you mean \"{sug}\"?"));
                            }
                            ctx.err(sp.clone(), msg);
                        }
                    }
                }
                _ => {}
            }
            let list = items.into_iter().map(|(s, _)| s).collect();
            let val = if append {
                Val::Append(list)
            } else {
                Val::List(list)
            };
            ctx.put(path.into(), span, val);
        }
        Kind::Env => match val {
            DeValue::Table(t) => {
                for (k, v) in t.iter() {
                    let name: &str = k.get_ref();
                    if !valid_env_name(name) {
                        ctx.err(k.span(), format!("{path}: '{name}' is not a valid variable name (letters, digits, '_')"));
                        continue;
                    }
                    match v.get_ref().as_str() {
                        Some(s) if !s.contains('\0') => {
                            ctx.put(format!("{path}.{name}"), v.span(), Val::Text(s.into()))
                        }
                        _ => ctx.err(
                            v.span(),
                            expected(&format!("{path}.{name}"), "a string", v.get_ref()),
                        ),
                    }
                }
            }
            _ => ctx.err(span, expected(path, "a table of NAME = \"value\"", val)),
        },
    }
}

/// A list of strings, or `{ append = [...] }`. Returns the items and whether they append.
#[allow(clippy::type_complexity)]
fn string_list(
    path: &str,
    v: &Spanned<DeValue<'_>>,
    ctx: &mut Ctx<'_>,
) -> Option<(Vec<(String, std::ops::Range<usize>)>, bool)> {
    let (arr, append) = match v.get_ref() {
        DeValue::Array(a) => (a, false),
        DeValue::Table(t) => {
            let mut arr = None;
            for (k, inner) in t.iter() {
                let key: &str = k.get_ref();
                if key != "append" {
                    let mut msg = format!(
                        "{path}: unknown key '{key}' in the append form; write {path} = {{ append = [...] }}"
                    );
                    if let Some(s) = suggest(key, ["append"].into_iter()) {
                        msg.push_str(&format!("; did you mean '{s}'?"));
                    }
                    ctx.err(k.span(), msg);
                    continue;
                }
                match inner.get_ref() {
                    DeValue::Array(a) => arr = Some(a),
                    other => ctx.err(
                        inner.span(),
                        expected(&format!("{path}.append"), "a list of strings", other),
                    ),
                }
            }
            (arr?, true)
        }
        other => {
            ctx.err(
                v.span(),
                expected(path, "a list of strings or { append = [...] }", other),
            );
            return None;
        }
    };
    let mut out = Vec::new();
    for item in arr.iter() {
        match item.get_ref().as_str() {
            Some(s) if !s.contains('\0') => out.push((s.to_string(), item.span())),
            _ => ctx.err(
                item.span(),
                expected(&format!("each entry of {path}"), "a string", item.get_ref()),
            ),
        }
    }
    Some((out, append))
}

fn expected(what: &str, want: &str, got: &DeValue<'_>) -> String {
    format!("{what} must be {want}, not {}", got.type_str())
}

fn number(v: &DeValue<'_>) -> Option<f64> {
    match v {
        DeValue::Integer(i) => {
            let s = i.as_str().replace('_', "");
            match i.radix() {
                10 => s.parse::<i64>().ok().map(|n| n as f64),
                r => i64::from_str_radix(
                    s.trim_start_matches("0x")
                        .trim_start_matches("0o")
                        .trim_start_matches("0b"),
                    r,
                )
                .ok()
                .map(|n| n as f64),
            }
        }
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite()),
        _ => None,
    }
}

/// `30`, `30s`, `500ms`, `5m`, `1h`, `1.5m` → seconds.
pub fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(n * mult).filter(|t| t.is_finite())
}

/// `512M`, `1G`, `64KiB`, `1.5G`, `4096` → bytes (binary multiples).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.trim_end_matches("IB").trim_end_matches('B');
    let mult: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    let b = n * mult as f64;
    (b.is_finite() && b >= 0.0 && b < u64::MAX as f64).then_some(b as u64)
}

/// 536870912 → `512M`; sizes that are not whole units stay in bytes.
pub fn human_bytes(b: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) {
            return format!("{}{unit}", b >> shift);
        }
    }
    b.to_string()
}

/// Refuse a host path in a profile that is relative or not normalised. Where it
/// leads is checked when a run uses it ([`crate::hostpath::check`]: the host
/// root, system directories, homes, secrets and aisbx state), against the
/// canonical path and with the `[perimeter] allow` of the profile in use.
pub fn check_bind(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(format!("'{p}' must be an absolute host path"));
    }
    if p.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("'{p}' must not contain '.' or '..'"));
    }
    if path == Path::new("/") {
        return Err("'/' is the host's root directory, which holds every other path".into());
    }
    Ok(())
}

/// The form of one `network.allow`/`network.deny` entry: a host name (letters,
/// digits, `-`, dots between labels), `*.` and a domain for its subdomains, an
/// IPv4 literal, or an IPv6 literal in brackets; each with an optional `:port`
/// (1 to 65535). No scheme, path or user.
pub fn check_host_rule(rule: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "'{rule}' {why}: write a host (\"example.org\"), its subdomains (\"*.example.org\") or an address, with an optional port (\"example.net:8443\")"
        ))
    };
    if rule.contains("://") || rule.contains('/') || rule.contains('@') {
        return bad("is not a destination (no scheme, path or user)");
    }
    let (host, port) = if let Some(rest) = rule.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return bad("has an unclosed '['");
        };
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("is not an IPv6 address in brackets");
        }
        match after {
            "" => return Ok(()),
            p => match p.strip_prefix(':') {
                Some(p) => (None, p),
                None => return bad("has text after ']'"),
            },
        }
    } else {
        match rule.rsplit_once(':') {
            Some((h, p)) => (Some(h), p),
            None => (Some(rule), ""),
        }
    };
    if !port.is_empty() && !matches!(port.parse::<u16>(), Ok(1..)) {
        return bad("has a port that is not 1 to 65535");
    }
    let Some(host) = host else { return Ok(()) };
    if host.contains(':') {
        return bad("is an IPv6 address without brackets");
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return bad("is not a host name");
    }
    if host.starts_with("*.") && !name.contains('.') {
        return bad("names every host under a top-level domain");
    }
    // The proxy's own reading of it (crate aisbx-net) must agree.
    rule.parse::<aisbx_net::Rule>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The closest of `options` to `word`, when close enough to be a likely typo.
pub fn suggest<'a>(word: &str, options: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    options
        .map(|o| (levenshtein(&w, o), o))
        .filter(|(d, o)| *d <= (o.len().max(w.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Layer, Vec<Diag>> {
        parse(text, "t", Source::Project, "t.toml", None)
    }

    fn messages(text: &str) -> Vec<String> {
        check(text)
            .expect_err("should fail")
            .into_iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn a_full_profile_parses_and_normalises() {
        let l = check(
            r#"
name = "t"
description = "d"
extends = ["base", "dev"]
[runtime]
language = "python"
interpreters = ["python3"]
extensions = { append = ["pyi"] }
env = { PYTHONUNBUFFERED = "1" }
[limits]
timeout = "2m"
memory = "1G"
pids = 10
cpus = 0.5
nofile = 64
workspace = "64M"
tmp = 1048576
output = "64K"
[network]
mode = "allowlist"
allow = ["example.org", "*.example.org", "example.net:8443", "10.0.0.5", "[2001:db8::1]:443"]
deny = ["bad.example.org"]
packages = ["python"]
max_connections = 16
max_egress = "100M"
[filesystem]
ro_binds = ["/opt/data"]
[env]
FOO = "bar"
[security]
seccomp = "dev"
landlock = "required"
"#,
        )
        .unwrap();
        assert_eq!(
            l.extends.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
            ["base", "dev"]
        );
        let v = |k: &str| l.values.get(k).map(|e| e.val.clone());
        assert_eq!(v("limits.timeout"), Some(Val::Float(120.0)));
        assert_eq!(v("limits.memory"), Some(Val::Int(1 << 30)));
        assert_eq!(v("limits.tmp"), Some(Val::Int(1 << 20)));
        assert_eq!(
            v("runtime.extensions"),
            Some(Val::Append(vec!["pyi".into()]))
        );
        assert_eq!(
            v("runtime.env.PYTHONUNBUFFERED"),
            Some(Val::Text("1".into()))
        );
        assert_eq!(v("env.FOO"), Some(Val::Text("bar".into())));
        assert_eq!(l.values["limits.pids"].line, 13);
        assert_eq!(v("network.max_egress"), Some(Val::Int(100 << 20)));
        assert_eq!(
            v("network.packages"),
            Some(Val::List(vec!["python".into()]))
        );
    }

    #[test]
    fn unknown_keys_have_line_and_did_you_mean() {
        let m = messages("[limits]\ntimout = 5\n\n[security]\nseccom = \"dev\"\n");
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(
            m[0],
            "t.toml:2:1: unknown key 'timout' in [limits]; did you mean 'timeout'?"
        );
        assert!(
            m[1].starts_with(
                "t.toml:5:1: unknown key 'seccom' in [security]; did you mean 'seccomp'?"
            ),
            "{m:?}"
        );
        let m = messages("timeout = 5\n");
        assert!(m[0].contains("'timeout' belongs in [limits]"), "{m:?}");
        let m = messages("[securty]\n");
        assert!(m[0].contains("did you mean 'security'?"), "{m:?}");
        let m = messages("[security]\nseccomp = \"off\"\n");
        assert!(m[0].contains("is not one of \"default\", \"dev\""), "{m:?}");
    }

    #[test]
    fn every_error_is_reported() {
        let m = messages(
            "name = \"other\"\n[limits]\nmemory = \"lots\"\npids = 1\ncpus = -1\n[network]\nmode = \"host\"\nallow = [\"http://example.com\"]\n[env]\n\"A=B\" = \"x\"\n",
        );
        assert_eq!(m.len(), 7, "{m:#?}");
        assert!(m[0].contains("does not match the file name"));
    }

    #[test]
    fn binds_must_be_absolute_and_normalised() {
        // Where a path leads is the host-path check's (crate::hostpath), at run time.
        for bad in ["/", "relative", "/opt/../root", "/opt/./x", ""] {
            assert!(check_bind(bad).is_err(), "{bad}");
        }
        for ok in ["/opt/data", "/srv/models", "/home/me/project"] {
            assert!(check_bind(ok).is_ok(), "{ok}");
        }
        let m = messages(
            "[filesystem]\nro_binds = [\"/opt/x\", \"opt/y\", \"/etc/ssh\"]\nrw_binds = [\"/srv/../etc\"]\n[perimeter]\nallow = [\"/\"]\n",
        );
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(m[0].contains("opt/y"), "{m:?}");
        // A project (or built-in) file cannot widen the check: where a bind
        // leads is checked as it is read.
        assert!(m[1].contains("/etc/ssh lies inside /etc"), "{m:?}");
        assert!(m[2].contains("/srv/../etc"), "{m:?}");
        assert!(m[3].contains("perimeter.allow"), "{m:?}");
        // A user profile may widen it, so its binds are checked at run time.
        let user = parse(
            "[filesystem]\nro_binds = [\"/etc/myapp\"]\n[perimeter]\nallow = [\"/etc/myapp\"]\n",
            "t",
            Source::User,
            "t.toml",
            None,
        );
        assert!(user.is_ok(), "{user:?}");
    }

    #[test]
    fn network_entries_are_checked() {
        for ok in [
            "example.org",
            "*.example.org",
            "example.net:8443",
            "10.0.0.5",
            "169.254.169.254:80",
            "[2001:db8::1]",
            "[::1]:443",
            "pypi-mirror.internal",
        ] {
            assert!(check_host_rule(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "https://example.org",
            "example.org/simple",
            "user@example.org",
            "*.org",
            "*",
            "exa mple.org",
            "example.org:0",
            "example.org:99999",
            "2001:db8::1",
            "[2001:db8::1",
            "[nothost]:80",
            "-bad.example.org",
            "a..b",
        ] {
            assert!(check_host_rule(bad).is_err(), "{bad}");
        }
        let m = messages(
            "[network]\nmode = \"open\"\nallow = [\"https://x.org\"]\npackages = [\"pyton\"]\nmax_connections = 0\n",
        );
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(m[0].contains("\"none\", \"allowlist\""), "{m:?}");
        assert!(m[1].contains("no scheme"), "{m:?}");
        assert!(m[2].contains("did you mean \"python\"?"), "{m:?}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_duration("500ms"), Some(0.5));
        assert_eq!(parse_duration("5m"), Some(300.0));
        assert_eq!(parse_duration("1 h"), Some(3600.0));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(human_bytes(512 << 20), "512M");
        assert_eq!(human_bytes(1000), "1000");
    }

    #[test]
    fn broken_toml_is_an_error_with_a_line() {
        let m = messages("[limits]\ntimeout = \n");
        assert!(m[0].starts_with("t.toml:2:"), "{m:?}");
    }

    #[test]
    fn append_form_is_checked() {
        let m = messages("[runtime]\nmarkers = { apend = [\"x\"] }\n");
        assert!(m[0].contains("did you mean 'append'?"), "{m:?}");
    }
}
