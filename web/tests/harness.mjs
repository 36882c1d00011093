// The browser tests' harness: a real `skython up`, Debian's Chromium driven by playwright-core,
// and the checks every page gets (console errors, an axe-core scan, screenshots).
//
// Environment: SKYTHON_BIN (the skython binary, required to start a server), SKYTHON_PYTHON
// (the runtime's Python; `skython up`'s default if unset), SKYTHON_CHROMIUM (default
// /usr/bin/chromium). `make web-test` sets them.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
/** Where tests leave what a person looks at afterwards: screenshots and server logs. */
export const resultsDir = join(web, "test-results");

/** Context options for the two screen sizes every page is checked at. */
export const viewports = {
  desktop: { viewport: { width: 1280, height: 800 } },
  phone: { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true },
};

// Servers still running when the test process exits (a failed `before`, a crash) are killed
// with it, so no `skython up` outlives its test run.
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Starts `skython up` on a free port with a fresh data directory and waits until /readyz says
 * it is ready (its Python runtime started). `signup`: `open` (the default of `up`), `invite` or
 * `closed`. Its output goes to a log file under test-results/logs; the log's tail is printed if
 * the server exits on its own, and by `printLogIfFailed(t)` (use it in `afterEach`).
 * Returns { url, adminToken, dataDir, log, logTail(), printLogIfFailed(t), stop() }.
 */
export async function startSkython({ signup } = {}) {
  const bin = process.env.SKYTHON_BIN;
  if (!bin) throw new Error("SKYTHON_BIN is not set: the path of the skython binary (make web-test sets it)");
  const dataDir = mkdtempSync(join(tmpdir(), "skython-web-"));
  mkdirSync(join(resultsDir, "logs"), { recursive: true });
  const log = join(resultsDir, "logs", `skython-${process.pid}-${Date.now()}.log`);
  const adminToken = "sky_web_test_admin_token";
  // Port 0: the server picks a free port and prints its URL, so no other process can take
  // the port between our choosing it and the server binding it.
  const args = ["up", "--addr", "127.0.0.1:0", "--data-dir", dataDir];
  if (process.env.SKYTHON_PYTHON) args.push("--python", process.env.SKYTHON_PYTHON);
  if (signup) args.push("--signup", signup);
  const env = { ...process.env, SKYTHON_ADMIN_TOKEN: adminToken, SKYTHON_LOG: process.env.SKYTHON_WEB_LOG ?? "warn" };
  // The full runtime would preload TensorFlow for nothing; another store or sign-up mode from
  // the caller's shell would make the server not the fresh one the tests expect.
  for (const name of ["SKYTHON_PYTHON_FULL", "SKYTHON_STORE", "SKYTHON_SIGNUP", "SKYTHON_PUBLIC_URL"]) {
    delete env[name];
  }

  const out = createWriteStream(log);
  const child = spawn(bin, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  let stopping = false;
  const logTail = (lines = 40) => {
    try {
      return readFileSync(log, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
    } catch (e) {
      return `(no log: ${e.message})`;
    }
  };
  // "close" comes after the output's last bytes, so the log is complete when it is printed.
  const closed = new Promise((resolve) => {
    child.on("close", (code, signal) => {
      running.delete(child);
      out.end(() => {
        if (!stopping) {
          console.error(`skython up exited by itself (code ${code}, signal ${signal}); the end of ${log}:\n${logTail()}`);
        }
        resolve();
      });
    });
  });
  const printedUrl = new Promise((resolve, reject) => {
    let buffered = "";
    child.stdout.on("data", (chunk) => {
      buffered += chunk;
      const m = buffered.match(/Skython is running at (\S+)/);
      if (m) resolve(m[1]);
    });
    child.on("error", (e) => reject(new Error(`starting ${bin}: ${e.message}`)));
    closed.then(() => reject(new Error("skython up exited before printing its URL")));
  });
  child.stdout.pipe(out, { end: false });
  child.stderr.pipe(out, { end: false });

  const stop = async () => {
    stopping = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const killed = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await closed;
      clearTimeout(killed);
    }
    await closed;
    rmSync(dataDir, { recursive: true, force: true });
  };

  try {
    const url = await withTimeout(printedUrl, 120_000, "skython up did not print its URL");
    await waitForReady(url, 120_000);
    return {
      url,
      adminToken,
      dataDir,
      log,
      logTail,
      /** Prints the log's tail when the test `t` failed. */
      printLogIfFailed(t) {
        if (!t.passed) console.error(`test "${t.name}" failed; the end of ${log}:\n${logTail()}`);
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw new Error(`${e.message}; the end of ${log}:\n${logTail()}`);
  }
}

async function waitForReady(url, ms) {
  const deadline = Date.now() + ms;
  let last = "no answer";
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`${url}/readyz`);
      if (r.ok) return;
      last = `${r.status} ${await r.text()}`;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${url}/readyz did not answer 200 within ${ms / 1000} s (last: ${last})`);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Debian's Chromium, headless, with the flags this machine's closed network needs (without the
 * background-networking ones Chromium keeps trying to reach Google). playwright-core gives each
 * launch a fresh, empty user data dir and removes it on `browser.close()`.
 */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.SKYTHON_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Collects the page's console errors and uncaught exceptions, as lines of text, into the returned list. */
export function watchConsole(page) {
  const errors = [];
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const { url, lineNumber } = msg.location();
    errors.push(`console.error: ${msg.text()}${url ? ` (${url}:${lineNumber})` : ""}`);
  });
  page.on("pageerror", (e) => errors.push(`uncaught ${e.name}: ${e.message}`));
  return errors;
}

/** Fails listing the errors `watchConsole` collected, except those matching one of `allow`. */
export function assertNoConsoleErrors(errors, { allow = [] } = {}) {
  const left = errors.filter((e) => !allow.some((re) => re.test(e)));
  if (left.length > 0) {
    assert.fail(`the page logged ${left.length} error(s):\n  ${left.join("\n  ")}`);
  }
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/**
 * Runs axe-core on the page and fails on any violation of impact serious or critical, listing
 * each rule, what it asks for and the elements at fault; returns axe's result.
 */
export async function scanA11y(page, label) {
  // Evaluated, not added as a script tag: the app's Content-Security-Policy refuses inline scripts.
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length > 0) {
    const lines = bad.map(
      (v) => `${v.id} (${v.impact}): ${v.help} — at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`,
    );
    assert.fail(`accessibility scan of ${label}: ${bad.length} serious or critical violation(s):\n  ${lines.join("\n  ")}`);
  }
  return result;
}

/** Writes a full-page screenshot to test-results/screenshots/<name>-<desktop|phone>.png; returns its path. */
export async function screenshot(page, name) {
  const width = page.viewportSize()?.width ?? viewports.desktop.viewport.width;
  const kind = width <= viewports.phone.viewport.width ? "phone" : "desktop";
  const path = join(resultsDir, "screenshots", `${name}-${kind}.png`);
  mkdirSync(dirname(path), { recursive: true });
  await page.screenshot({ path, fullPage: true });
  return path;
}

/**
 * A local HTTP server on a free port answering GET `path` with `routes[path]` (HTML text);
 * any other path gets a 404. Returns { url, close() }.
 */
export async function serveHtml(routes) {
  const server = createServer((req, res) => {
    const body = routes[new URL(req.url, "http://x").pathname];
    if (body === undefined) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(body);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

// API helpers, for tests that set up data without the UI. Each fails with the server's answer
// when it is not the expected status.

async function api(url, method, path, token, body, expected) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(`${url}/api/v1${path}`, { method, headers, body: JSON.stringify(body) });
  const text = await r.text();
  if (r.status !== expected) {
    throw new Error(`${method} /api/v1${path}: expected ${expected}, got ${r.status}: ${text}`);
  }
  return JSON.parse(text);
}

/** Creates the account `name` (POST /api/v1/accounts); returns its API token. */
export async function signUp(url, name, password) {
  return (await api(url, "POST", "/accounts", null, { name, password }, 201)).token;
}

/** Deploys a function (POST /api/v1/functions; `spec` as in docs/openapi.json's SkyFunctionSpec); returns the FunctionView. */
export function deploy(url, token, spec) {
  return api(url, "POST", "/functions", token, spec, 201);
}

/** Creates an API key scoped to `functions` (["owner/endpoint" or "owner/*"]); returns its secret. */
export async function createKey(url, token, name, functions) {
  return (await api(url, "POST", "/keys", token, { name, functions }, 201)).secret;
}
