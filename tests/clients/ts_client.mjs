#!/usr/bin/env node
// Drive aisbx-mcp with the official TypeScript MCP SDK (`@modelcontextprotocol/sdk`),
// the same scenarios as python_client.py.
//
//   node tests/clients/ts_client.mjs --bin target/x86_64-unknown-linux-gnu/debug/aisbx-mcp [--transport stdio|http|unix|all]
//
// Needs the packages of tests/clients/package.json (run_ts.sh installs them).
// Checks, per transport: the tool list (names, schemas, no warning from the SDK's
// schema validator), `run`, progress
// notifications, `logging/setLevel`, log messages, `build` then `run` in the sandbox,
// `profile_list`, bad arguments (-32602 naming the field), a limit above the profile's
// refused, and the server still serving afterwards. `http` starts
// `aisbx-mcp --http 127.0.0.1:0`, checks the token file it makes ($AISBX_HOME/mcp-token,
// mode 0600), 401 without or with a wrong token, and connects with the token; `unix`
// starts `aisbx-mcp --listen unix:PATH` and connects over the socket (the SDK's
// Streamable HTTP transport with a fetch that dials the socket). `all` runs the three.
// Prints `N passed, N failed`; exits 1 on any failure.

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { LoggingMessageNotificationSchema, McpError } from "@modelcontextprotocol/sdk/types.js";
import { Agent, fetch as undiciFetch } from "undici";

const EXPECTED_TOOLS = [
  "run", "build", "profile_list",
  "sandbox_list", "sandbox_destroy", "file_write", "file_read", "file_list", "file_delete",
  "snapshot_create", "snapshot_restore", "snapshot_list", "snapshot_diff", "snapshot_delete",
  "quota",
];
const CALL_TIMEOUT_MS = 120_000;

const results = [];
function check(name, ok, detail = "") {
  results.push({ name, ok: Boolean(ok) });
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail && !ok ? `: ${detail}` : ""}`);
}

const show = (v) => {
  const s = JSON.stringify(v);
  return s && s.length > 600 ? `${s.slice(0, 600)}...` : s;
};
const textOf = (r) => (r.content ?? []).map((c) => c.text ?? "").join("");
const structured = (r) => r.structuredContent ?? {};

function serverEnv(home) {
  const env = { ...process.env, AISBX_HOME: home };
  delete env.AISBX_MCP_TOKEN;
  return env;
}

// Starts aisbx-mcp with ARGS; resolves with the process and its `serving MCP` line.
function startServer(bin, home, args) {
  const proc = spawn(bin, args, { env: serverEnv(home), stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    let buf = "";
    let found = false;
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`aisbx-mcp ${args.join(" ")} did not say where it serves`));
    }, 30_000);
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        process.stderr.write(`[server] ${line}\n`);
        if (!found && line.includes("serving MCP")) {
          found = true;
          clearTimeout(timer);
          resolve({ proc, line });
        }
      }
    });
    proc.on("exit", (code, signal) => {
      clearTimeout(timer);
      if (!found) reject(new Error(`aisbx-mcp ${args.join(" ")} exited (${code ?? signal}) before serving`));
    });
  });
}

async function stop(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

function newClient(logs) {
  const client = new Client({ name: "aisbx-ts-client", version: "1" });
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
    logs.push(n.params);
  });
  return client;
}

// Each opener returns { client, close } with an initialized session.
async function stdioSession(bin, home, logs) {
  const transport = new StdioClientTransport({ command: bin, args: [], env: serverEnv(home), stderr: "inherit" });
  const client = newClient(logs);
  await client.connect(transport);
  return { client, close: () => client.close() };
}

async function httpSession(bin, home, logs) {
  const { proc, line } = await startServer(bin, home, ["--http", "127.0.0.1:0"]);
  try {
    const m = line.match(/(http:\/\/\S+\/mcp)/);
    if (!m) throw new Error(`no URL in ${JSON.stringify(line)}`);
    const url = m[1];
    const tokenFile = join(home, "mcp-token");
    const mode = statSync(tokenFile).mode & 0o7777;
    check("http: token file made with mode 0600", mode === 0o600, mode.toString(8));
    const token = readFileSync(tokenFile, "utf8").trim();
    check("http: the token is never printed", token.length > 0 && !line.includes(token), line);
    const ping = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "ping" });
    const headers = { Accept: "application/json, text/event-stream", "Content-Type": "application/json" };
    let r = await fetch(url, { method: "POST", body: ping, headers });
    check("http: no token -> 401",
      r.status === 401 && (r.headers.get("www-authenticate") ?? "").startsWith("Bearer"), `got ${r.status}`);
    r = await fetch(url, { method: "POST", body: ping, headers: { ...headers, Authorization: `Bearer ${token}x` } });
    check("http: wrong token -> 401", r.status === 401, `got ${r.status}`);
    const transport = new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { Authorization: `Bearer ${token}` } },
    });
    const client = newClient(logs);
    await client.connect(transport);
    return { client, close: async () => { await client.close(); await stop(proc); } };
  } catch (e) {
    await stop(proc);
    throw e;
  }
}

async function unixSession(bin, home, logs) {
  const sock = join(home, "mcp.sock");
  const { proc } = await startServer(bin, home, ["--listen", `unix:${sock}`]);
  const agent = new Agent({ connect: { socketPath: sock } });
  try {
    const mode = statSync(sock).mode & 0o7777;
    check("unix: socket made with mode 0600", mode === 0o600, mode.toString(8));
    const transport = new StreamableHTTPClientTransport(new URL("http://localhost/mcp"), {
      fetch: (url, init) => undiciFetch(url, { ...init, dispatcher: agent }),
    });
    const client = newClient(logs);
    await client.connect(transport);
    return {
      client,
      close: async () => { await client.close(); await agent.close(); await stop(proc); },
    };
  } catch (e) {
    await agent.close();
    await stop(proc);
    throw e;
  }
}

async function call(client, name, args, extra = {}) {
  return client.callTool({ name, arguments: args }, undefined, { timeout: CALL_TIMEOUT_MS, ...extra });
}

async function expectInvalid(client, tool, args, field, label) {
  let result;
  try {
    result = await call(client, tool, args);
  } catch (e) {
    if (!(e instanceof McpError)) {
      check(label, false, `${e?.name}: ${e?.message}`);
      return;
    }
    const data = e.data ?? {};
    const fieldOk = typeof data !== "object" || data === null || (data.field ?? field) === field;
    check(label, e.code === -32602 && e.message.includes(field) && fieldOk,
      `code ${e.code} message ${JSON.stringify(e.message)} data ${show(data)}`);
    return;
  }
  check(label, false, `no error; result ${show(result)}`);
}

async function exercise(client, t, logs) {
  // The SDK compiles each outputSchema with Ajv when it lists the tools; Ajv reports
  // what it cannot use (a `format` it does not know ...) through console.warn.
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => warnings.push(args.map(String).join(" "));
  let tools;
  try {
    ({ tools } = await client.listTools());
  } finally {
    console.warn = warn;
  }
  check(`${t}: the SDK's schema validator raises no warning`, warnings.length === 0,
    `${warnings.length} warning(s), e.g. ${show(warnings.slice(0, 3))}`);
  const names = tools.map((tool) => tool.name);
  check(`${t}: tools/list names`, show([...names].sort()) === show([...EXPECTED_TOOLS].sort()), show(names));
  for (const tool of tools) {
    check(`${t}: ${tool.name} has description and schemas`,
      Boolean(tool.description) && Boolean(tool.inputSchema) && Boolean(tool.outputSchema), show(tool));
  }

  let r = await call(client, "run", { command: ["echo", "hello from typescript"] });
  let sc = structured(r);
  check(`${t}: run echo`, !r.isError && sc.stdout === "hello from typescript\n" && sc.exit_code === 0, show(r));
  const text = textOf(r);
  check(`${t}: run has a text summary`, text.includes("hello from typescript") && text.startsWith("exit 0"), text);

  r = await call(client, "run", { command: ["sh", "-c", "exit 7"] });
  check(`${t}: non-zero exit is a normal result`, !r.isError && structured(r).exit_code === 7, show(r));

  await client.setLoggingLevel("debug");
  check(`${t}: logging/setLevel`, true);

  const progress = [];
  r = await call(client, "run", { command: ["sh", "-c", "echo one; sleep 0.3; echo two"] }, {
    onprogress: (p) => progress.push(p),
  });
  const increasing = progress.every((p, i) => i === 0 || p.progress > progress[i - 1].progress);
  const joined = progress.map((p) => p.message ?? "").join("");
  check(`${t}: progress notifications stream output`,
    progress.length >= 2 && increasing && joined === "one\ntwo\n", show(progress));
  check(`${t}: log messages received`, logs.length >= 1, show(logs.slice(0, 3)));

  const name = `ts-${t}-${process.pid}`;
  const b = await call(client, "build", { name, files: { "data.txt": "42\n" }, setup: ["echo built > made.txt"] });
  const bsc = structured(b);
  const sid = bsc.sandbox_id;
  check(`${t}: build`, !b.isError && Boolean(sid) && (bsc.setup ?? []).length === 1, show(b));
  if (sid) {
    r = await call(client, "run", { sandbox_id: sid, command: ["sh", "-c", "cat data.txt made.txt"] });
    check(`${t}: run in the built sandbox`, structured(r).stdout === "42\nbuilt\n", show(r));
    const d = await call(client, "sandbox_destroy", { sandbox_id: sid });
    check(`${t}: sandbox_destroy`, !d.isError, show(d));
  }

  const p = await call(client, "profile_list", {});
  check(`${t}: profile_list`, !p.isError && (structured(p).profiles ?? []).length >= 1, show(p));

  await expectInvalid(client, "run", { code: "print(1)", command: ["ls"] }, "code", `${t}: both code and command`);
  await expectInvalid(client, "run", {}, "code", `${t}: neither code nor command`);
  await expectInvalid(client, "run", { command: "ls" }, "command", `${t}: command not a list`);
  await expectInvalid(client, "run", { command: ["ls"], files: { "/etc/x": "y" } }, "files", `${t}: absolute file path`);
  await expectInvalid(client, "run", { command: ["ls"], files: { "../x": "y" } }, "files", `${t}: '..' in a file path`);
  await expectInvalid(client, "run", { command: ["ls"], timeout_secs: "long" }, "timeout_secs", `${t}: timeout_secs type`);

  r = await call(client, "run", { command: ["true"], profile: "strict", timeout_secs: 20 });
  const refused = textOf(r);
  check(`${t}: a limit above the profile's is refused`,
    r.isError && refused.includes("timeout_secs") && refused.includes("never raise"), refused);

  r = await call(client, "run", { command: ["echo", "still alive"] });
  check(`${t}: still serving after bad arguments`, structured(r).stdout === "still alive\n", show(r));
}

async function main() {
  const { values } = parseArgs({
    options: { bin: { type: "string" }, transport: { type: "string", default: "all" } },
  });
  if (!values.bin) {
    console.error("usage: ts_client.mjs --bin PATH-TO-aisbx-mcp [--transport stdio|http|unix|all]");
    return 2;
  }
  const openers = { stdio: stdioSession, http: httpSession, unix: unixSession };
  // `both` is what python_client.py calls the three.
  const all = values.transport === "all" || values.transport === "both";
  const transports = all ? Object.keys(openers) : [values.transport];
  for (const t of transports) {
    if (!openers[t]) {
      console.error(`unknown transport ${JSON.stringify(t)}: use stdio, http, unix or all`);
      return 2;
    }
  }
  for (const t of transports) {
    const home = mkdtempSync(join(tmpdir(), "aisbx-ts-"));
    const logs = [];
    let session;
    try {
      session = await openers[t](values.bin, home, logs);
      let timer;
      const deadline = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("scenarios took over 300 s")), 300_000);
      });
      try {
        await Promise.race([exercise(session.client, t, logs), deadline]);
      } finally {
        clearTimeout(timer);
      }
    } catch (e) {
      console.error(e?.stack ?? e);
      check(`${t}: session`, false, `${e?.name}: ${e?.message}`);
    } finally {
      if (session) {
        try {
          await session.close();
        } catch (e) {
          check(`${t}: close`, false, `${e?.name}: ${e?.message}`);
        }
      }
      rmSync(home, { recursive: true, force: true });
    }
  }
  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  console.log(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

process.exitCode = await main();
