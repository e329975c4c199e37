// Test harness: the real broker binary, a recording proxy in front of it, and an HTTPS
// server that records the Authorization header. Every wait is bounded.
import { execFile, spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const packageDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const HANDLER_BIN = process.env.HANDLER_BIN
  ? path.resolve(process.env.HANDLER_BIN)
  : path.resolve(packageDir, "../../target/debug/handler");

export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** `handler keys new ...` -> { key, entry } */
export async function newKey(args) {
  const { stdout } = await run(HANDLER_BIN, ["keys", "new", ...args], { timeout: 10_000 });
  const key = /^key:\s+(tbk_\S+)/m.exec(stdout)?.[1];
  const entry = /^entry:\s+(\{.*\})\s*$/m.exec(stdout)?.[1];
  if (!key || !entry) throw new Error(`unexpected output of handler keys new: ${stdout.replace(/tbk_\S+/g, "tbk_***")}`);
  return { key, entry: JSON.parse(entry) };
}

/** Starts `handler dev --port N` with TOKEN_API_KEYS = entries; resolves once GET / answers. */
export async function startBroker(entries, { readyTimeoutMs = 30_000 } = {}) {
  const port = await freePort();
  const env = { ...process.env, TOKEN_API_KEYS: JSON.stringify(entries) };
  for (const name of ["TOKEN_API_AUTH", "TOKEN_API_KEYS_FILE", "TOKEN_API_CALLERS", "TOKEN_API_CALLERS_FILE"]) {
    delete env[name];
  }
  const child = spawn(HANDLER_BIN, ["dev", "--bind", "127.0.0.1", "--port", String(port)], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const killOnExit = () => child.kill("SIGKILL"); // a crashed test run leaves no broker behind
  process.once("exit", killOnExit);
  let output = "";
  const collect = (chunk) => {
    output = (output + chunk).slice(-20_000);
  };
  child.stdout.on("data", collect);
  child.stderr.on("data", collect);
  let exited = null;
  const exit = new Promise((resolve) =>
    child.once("exit", (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    }),
  );
  const spawnError = new Promise((_, reject) => child.once("error", reject));
  spawnError.catch(() => {});
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (exited) return;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
    await exit;
    clearTimeout(timer);
    process.removeListener("exit", killOnExit);
  };
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (exited) throw new Error(`handler exited (${JSON.stringify(exited)}) before answering:\n${output}`);
    try {
      const res = await Promise.race([fetch(`${url}/`, { signal: AbortSignal.timeout(1_000) }), spawnError]);
      await res.arrayBuffer();
      if (res.ok) break;
    } catch (err) {
      if (err?.code === "ENOENT") throw new Error(`no broker binary at ${HANDLER_BIN} (set HANDLER_BIN or run cargo build)`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`handler did not answer GET / within ${readyTimeoutMs} ms:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { url, port, stop, output: () => output };
}

/** GET a token straight from the broker (no client): { status, body }. */
export async function askBroker(url, scope, key, query = "") {
  const res = await fetch(`${url}/api/tokens/${encodeURIComponent(scope)}${query}`, {
    headers: { authorization: `Bearer ${key}` },
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, body: await res.json() };
}

async function listen(server) {
  await new Promise((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  return server.address().port;
}

function closer(server) {
  return () =>
    new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
}

/**
 * An HTTP proxy in front of `target` that records every request. `intercept(n, req)` may
 * answer the n-th request (1-based) itself: return { status, headers, body }, or "hang".
 */
export async function startProxy(target, intercept = () => undefined) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method, url: req.url, authorization: req.headers.authorization });
    const answer = intercept(requests.length, req);
    if (answer === "hang") return;
    if (answer) {
      res.writeHead(answer.status, { "content-type": "application/json", ...answer.headers });
      res.end(JSON.stringify(answer.body ?? {}));
      return;
    }
    const upstream = http.request(
      `${target}${req.url}`,
      { method: req.method, headers: { ...req.headers, host: new URL(target).host }, timeout: 10_000 },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      },
    );
    upstream.on("timeout", () => upstream.destroy(new Error("upstream timeout")));
    upstream.on("error", () => {
      if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" });
      res.end('{"error":"proxy","message":"upstream failed"}');
    });
    req.pipe(upstream);
  });
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, requests, close: closer(server) };
}

/** A self-signed certificate for 127.0.0.1 made with openssl (bearer policies need https). */
export async function selfSignedCert() {
  const dir = await mkdtemp(path.join(tmpdir(), "broker-client-tls-"));
  try {
    const key = path.join(dir, "key.pem");
    const cert = path.join(dir, "cert.pem");
    await run(
      "openssl",
      ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
       "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
       "-addext", "subjectAltName=IP:127.0.0.1"],
      { timeout: 10_000 },
    );
    return { key: await readFile(key, "utf8"), cert: await readFile(cert, "utf8") };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** An HTTPS server that records each request's Authorization header and answers 200 {}. */
export async function startRecorder(tls) {
  const seen = [];
  const server = https.createServer(tls, (req, res) => {
    seen.push({ url: req.url, authorization: req.headers.authorization });
    res.writeHead(200, { "content-type": "application/json" });
    res.end("{}");
  });
  const port = await listen(server);
  return { url: `https://127.0.0.1:${port}`, seen, close: closer(server) };
}
