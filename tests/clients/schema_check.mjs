#!/usr/bin/env node
// Check every tool's inputSchema and outputSchema the way a JSON Schema validator sees
// them, for what the Inspector's `--strict` lint does not look at (it has no rule for
// `format`).
//
//   node tests/clients/schema_check.mjs TOOLS.json
//
// TOOLS.json is a `tools/list` result ({"tools": [...]}) or the Inspector CLI's
// `--format json` envelope ({"result": {"tools": [...]}}). Per schema:
//   1. formats: every `format` in the schema and all its subschemas must be one of the
//      formats JSON Schema 2020-12 defines (section 7.3 of the Validation spec).
//      Ajv (strict) rejects any other, most validators ignore it, so `uint64`, `int32`,
//      `double` (Rust/OpenAPI widths) are findings, one per occurrence;
//   2. Ajv 8 (draft 2020-12) compiles the schema in full strict mode (strictSchema,
//      strictTypes, strictTuples, strictRequired, no union types other than with
//      "null"): a throw or a logged warning is a finding (an unknown keyword, a schema
//      not valid against the 2020-12 meta-schema, `required` naming an undefined
//      property, an unbounded tuple ...). Formats are left to check 1 so that they are
//      all counted, not only the first.
// Prints one `ok`/`FAIL` line per schema, the findings by kind, and `N passed,
// N failed`; exits 1 on any finding.

import { readFileSync } from "node:fs";

import Ajv2020 from "ajv/dist/2020.js";

// JSON Schema Validation 2020-12, section 7.3.
const STANDARD_FORMATS = new Set([
  "date-time", "date", "time", "duration",
  "email", "idn-email",
  "hostname", "idn-hostname",
  "ipv4", "ipv6",
  "uri", "uri-reference", "iri", "iri-reference", "uuid",
  "uri-template",
  "json-pointer", "relative-json-pointer",
  "regex",
]);
const SCHEMA_KEYWORDS = [
  "items", "additionalItems", "additionalProperties", "unevaluatedItems", "unevaluatedProperties",
  "contains", "propertyNames", "not", "if", "then", "else", "contentSchema",
];
const SCHEMA_ARRAY_KEYWORDS = ["allOf", "anyOf", "oneOf", "prefixItems"];
const SCHEMA_MAP_KEYWORDS = ["properties", "patternProperties", "dependentSchemas", "$defs", "definitions"];

function walkFormats(node, path, out) {
  if (typeof node !== "object" || node === null || Array.isArray(node)) return;
  if (typeof node.format === "string" && !STANDARD_FORMATS.has(node.format)) {
    out.push({ kind: `format "${node.format}"`, text: `format "${node.format}" (not a JSON Schema format) at ${path}` });
  }
  for (const k of SCHEMA_KEYWORDS) {
    if (k in node) walkFormats(node[k], `${path}/${k}`, out);
  }
  for (const k of SCHEMA_ARRAY_KEYWORDS) {
    if (Array.isArray(node[k])) node[k].forEach((s, i) => walkFormats(s, `${path}/${k}/${i}`, out));
  }
  for (const k of SCHEMA_MAP_KEYWORDS) {
    const map = node[k];
    if (typeof map === "object" && map !== null) {
      for (const [name, s] of Object.entries(map)) walkFormats(s, `${path}/${k}/${name}`, out);
    }
  }
}

function ajvFindings(schema) {
  const out = [];
  const capture = (...args) => out.push({ kind: "ajv strict", text: `ajv: ${args.map(String).join(" ")}` });
  const ajv = new Ajv2020({
    strict: true,
    allowUnionTypes: false,
    validateFormats: false,
    logger: { log() {}, warn: capture, error: capture },
  });
  try {
    ajv.compile(schema);
  } catch (e) {
    out.push({ kind: "ajv strict", text: `ajv: ${e?.message ?? e}` });
  }
  return out;
}

const file = process.argv[2];
if (!file) {
  console.error("usage: schema_check.mjs TOOLS.json");
  process.exit(2);
}
const doc = JSON.parse(readFileSync(file, "utf8"));
const tools = (doc.result ?? doc).tools;
if (!Array.isArray(tools) || tools.length === 0) {
  console.error(`schema_check: no tools in ${file}`);
  process.exit(2);
}

let passed = 0;
let failed = 0;
const kinds = new Map();
for (const tool of tools) {
  for (const which of ["inputSchema", "outputSchema"]) {
    const schema = tool[which];
    if (schema === undefined) continue;
    const findings = [];
    walkFormats(schema, "#", findings);
    findings.push(...ajvFindings(schema));
    if (findings.length === 0) {
      passed++;
      console.log(`ok   ${tool.name} ${which}`);
      continue;
    }
    failed++;
    console.log(`FAIL ${tool.name} ${which}: ${findings.length} finding(s)`);
    for (const f of findings) {
      console.log(`       ${f.text}`);
      kinds.set(f.kind, (kinds.get(f.kind) ?? 0) + 1);
    }
  }
}
if (kinds.size > 0) {
  const total = [...kinds.values()].reduce((a, b) => a + b, 0);
  console.log(`schema check: ${total} finding(s): ${[...kinds].map(([k, n]) => `${n} ${k}`).join(", ")}`);
}
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
