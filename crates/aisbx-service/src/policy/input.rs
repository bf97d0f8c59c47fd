//! The input document every decision gets, as Rust types: the documents are made
//! by serializing these, and the JSON Schema that docs/POLICY.md publishes
//! (`docs/policy-input.schema.json`, printed by `aisbx policy schema`) is
//! generated from the same types, so the two cannot drift apart.

use schemars::JsonSchema;
use serde::Serialize;

use crate::api::Transport;

/// The input document of one decision (`input` in Rego).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(title = "aisbx policy input", deny_unknown_fields)]
pub struct Input {
    /// The MCP tool, or the CLI command mapped to the same name (`run`, `build`, ...).
    pub tool: String,
    pub caller: CallerDoc,
    /// The normalized request; its shape depends on `tool`.
    pub request: RequestDoc,
    /// The profile the request resolved to: present for `run` and `build` (and a
    /// dry run), absent for every other tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileDoc>,
}

/// Who asks.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CallerDoc {
    /// The tenant the request counts against (`default` until tenants are configured).
    pub tenant: String,
    pub transport: Transport,
    /// The MCP client's self-reported name, or the user for the CLI.
    pub client: Option<String>,
}

/// The request, by tool. Sizes and names, never file contents.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RequestDoc {
    /// `run`.
    Run(RunDoc),
    /// `build` (also `aisbx create` without `--from`).
    Build(BuildDoc),
    /// `snapshot_restore` (also `aisbx create --from SNAPSHOT`).
    SnapshotRestore(SnapshotRestoreDoc),
    /// `snapshot_create`.
    SnapshotCreate(SnapshotCreateDoc),
    /// `snapshot_diff`.
    SnapshotDiff(SnapshotDiffDoc),
    /// `snapshot_delete`.
    SnapshotDelete(NameDoc),
    /// `snapshot_list`.
    SnapshotList(SnapshotListDoc),
    /// `sandbox_destroy`.
    SandboxDestroy(SandboxDoc),
    /// `file_read`, `file_delete`.
    FilePath(FilePathDoc),
    /// `file_list`.
    FileList(FileListDoc),
    /// `file_write`.
    FileWrite(FileWriteDoc),
    /// `copy_in`, `copy_out`.
    Copy(CopyDoc),
    /// `profile_list`.
    ProfileList(WorkdirDoc),
    /// `profile_show`.
    ProfileShow(ProfileShowDoc),
    /// `profile_detect`.
    ProfileDetect(ProfileDetectDoc),
    /// `profile_validate`.
    ProfileValidate(ProfileValidateDoc),
    /// `audit_tail`.
    AuditTail(AuditTailDoc),
    /// `sandbox_list`, `snapshot_verify`, `doctor`, `audit_verify`: nothing to say.
    Empty(EmptyDoc),
}

/// A restore: from the snapshot `name` into `target` (`{"Sandbox": name}` or
/// `{"Workdir": path}`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SnapshotRestoreDoc {
    pub name: String,
    pub target: crate::snapshot::RestoreTarget,
    pub profile: Option<String>,
}

/// A snapshot of `source` (`{"Sandbox": id}` or `{"Workdir": path}`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SnapshotCreateDoc {
    pub name: String,
    pub source: crate::snapshot::SnapSource,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SnapshotDiffDoc {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NameDoc {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SnapshotListDoc {
    pub with_sharing: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SandboxDoc {
    pub sandbox_id: String,
}

/// A path inside a sandbox's workspace.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FilePathDoc {
    pub sandbox_id: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FileListDoc {
    pub sandbox_id: String,
    pub path: String,
    pub recursive: bool,
}

/// A write: its size, not its content.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FileWriteDoc {
    pub sandbox_id: String,
    pub path: String,
    pub bytes: usize,
}

/// A copy between the host (`{"Host": path}`) and a sandbox
/// (`{"Sandbox": {"id": ..., "path": ...}}`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CopyDoc {
    pub src: crate::snapshot_api::CopyEnd,
    pub dst: crate::snapshot_api::CopyEnd,
    pub keep_links: bool,
}

/// Where a project's profiles are looked for.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WorkdirDoc {
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProfileShowDoc {
    pub name: String,
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProfileDetectDoc {
    pub path: Option<String>,
    pub code_bytes: Option<usize>,
    pub language: Option<String>,
    pub profile: Option<String>,
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProfileValidateDoc {
    pub files: Vec<String>,
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AuditTailDoc {
    pub n: usize,
}

/// No fields.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EmptyDoc {}

/// A `run` request.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RunDoc {
    /// The language the run resolved to (`python`, `node`, ...), if any.
    pub language: Option<String>,
    /// The code given inline, if any.
    pub code: Option<String>,
    /// Its size in bytes (0 without code).
    pub code_bytes: usize,
    /// argv of a command run, if any.
    pub command: Option<Vec<String>>,
    /// The host path of a script run, if any.
    pub file: Option<String>,
    /// Arguments after the code or script.
    pub args: Vec<String>,
    /// Names of the files given to the run.
    pub files: Vec<String>,
    /// Names (not values) of the environment variables asked for.
    pub env: Vec<String>,
    /// The limits the request asked for (only those it named).
    pub limits: AskedLimits,
    /// The persistent sandbox it runs in, if any.
    pub sandbox_id: Option<String>,
    /// Whether a host directory is bound as the workspace.
    pub workdir: bool,
}

/// A `build` request (a persistent sandbox with setup commands).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BuildDoc {
    pub name: Option<String>,
    pub profile: Option<String>,
    pub files: Vec<String>,
    pub setup: Vec<String>,
}

/// Limits a request asked for; absent ones were not asked.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AskedLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

/// Limits in the input document's units.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct LimitsDoc {
    pub timeout_secs: f64,
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpus: f64,
}

/// The resolved profile.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProfileDoc {
    pub name: String,
    pub language: Option<String>,
    pub limits: LimitsDoc,
    /// `default` or `dev`.
    pub seccomp: String,
    /// `best-effort` or `required`.
    pub landlock: String,
    /// The network mode: `none`, or `allowlist` (docs/NETWORK.md).
    pub network: String,
    /// With `allowlist`: the destinations the profile names (before package
    /// indexes are resolved and before the policy's `network` narrows them).
    pub network_allow: Vec<String>,
    /// With `allowlist`: the package indexes it asks for (`python`, `node`).
    pub network_packages: Vec<String>,
    pub ro_binds: Vec<String>,
    pub rw_binds: Vec<String>,
    /// Where the profile came from (`builtin`, `user`, `project`).
    pub source: String,
}

/// The JSON Schema of [`Input`], pretty-printed with a final newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Input);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// Checking documents against the generated schema, for tests here and in the gate.
#[cfg(test)]
pub(crate) mod testing {
    use serde_json::Value;

    /// Whether `doc` conforms to the published schema; where not, why.
    pub(crate) fn check(doc: &Value) -> Result<(), String> {
        let schema: Value = serde_json::from_str(&super::schema_json()).expect("schema");
        conforms(&schema, &schema, doc, "input")
    }

    /// Checks `v` against `schema` for what these types use: `$ref`, `type`,
    /// `properties`, `required`, `additionalProperties: false`, `anyOf`, `items`,
    /// `enum`. Returns where it does not conform.
    pub(crate) fn conforms(
        root: &Value,
        schema: &Value,
        v: &Value,
        at: &str,
    ) -> Result<(), String> {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.trim_start_matches("#/$defs/");
            return conforms(root, &root["$defs"][name], v, at);
        }
        if let Some(any) = schema["anyOf"].as_array().or(schema["oneOf"].as_array()) {
            return any
                .iter()
                .find(|s| conforms(root, s, v, at).is_ok())
                .map(|_| ())
                .ok_or(format!("{at}: matches no alternative"));
        }
        if let Some(e) = schema["enum"].as_array()
            && !e.contains(v)
        {
            return Err(format!("{at}: {v} not in {e:?}"));
        }
        if let Some(c) = schema.get("const")
            && c != v
        {
            return Err(format!("{at}: {v} is not {c}"));
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let fits = types.is_empty()
            || types.contains(&kind)
            || (kind == "integer" && types.contains(&"number"));
        if !fits {
            return Err(format!("{at}: {kind} where the schema says {types:?}"));
        }
        if let Value::Object(m) = v {
            let props = schema["properties"].as_object();
            for (k, x) in m {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => conforms(root, s, x, &format!("{at}.{k}"))?,
                    None if schema["additionalProperties"] == Value::Bool(false) => {
                        return Err(format!("{at}.{k}: not in the schema"));
                    }
                    None => {}
                }
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                if !m.contains_key(r.as_str().unwrap_or_default()) {
                    return Err(format!("{at}: {r} missing"));
                }
            }
        }
        if let (Value::Array(a), Some(items)) = (v, schema.get("items")) {
            for (i, x) in a.iter().enumerate() {
                conforms(root, items, x, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::testing::conforms;
    use crate::api::{BuildRequest, Caller, LimitOverrides, Program, RunRequest};

    /// The documents decisions get conform to the published schema, and a document
    /// with a field the schema lacks does not (the check can fail).
    #[test]
    fn real_documents_conform_to_the_schema() {
        let schema: Value = serde_json::from_str(&super::schema_json()).unwrap();
        let catalog = crate::profile::Catalog::builtin();
        let python = catalog.resolve("python").unwrap();
        let caller = Caller {
            tenant: "default".into(),
            transport: crate::api::Transport::Http,
            client: Some("c".into()),
        };
        let mut run = RunRequest::new(Program::Code {
            code: "print(1)".into(),
            language: "python".into(),
        });
        run.limits = LimitOverrides {
            memory_bytes: Some(1 << 28),
            ..Default::default()
        };
        let cmd = RunRequest::new(Program::Command(vec![
            "sh".into(),
            "-c".into(),
            "true".into(),
        ]));
        let build = BuildRequest {
            name: Some("b".into()),
            setup: vec!["true".into()],
            ..Default::default()
        };
        let docs = [
            super::super::run_input(&caller, &run, &python, Some("python")),
            super::super::run_input(&caller, &cmd, &python, None),
            super::super::build_input(&caller, &build, &python),
        ];
        for d in &docs {
            conforms(&schema, &schema, d, "input").unwrap_or_else(|e| panic!("{e}\n{d:#}"));
        }
        let mut bad = docs[0].clone();
        bad["request"]["surprise"] = Value::from(1);
        assert!(conforms(&schema, &schema, &bad, "input").is_err());
    }

    /// The published schema is the generated one: regenerate it with
    /// `aisbx policy schema > docs/policy-input.schema.json`.
    #[test]
    fn the_checked_in_schema_is_generated_from_these_types() {
        let checked_in = include_str!("../../../../docs/policy-input.schema.json");
        assert_eq!(
            checked_in,
            super::schema_json(),
            "docs/policy-input.schema.json is stale: run `aisbx policy schema > docs/policy-input.schema.json`"
        );
    }
}
