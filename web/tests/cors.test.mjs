// CORS in a real browser: a page served from another origin (a second local port) calls a
// public endpoint with fetch and a key-gated one with X-Api-Key, and shows what came back.
import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";
import {
  assertNoConsoleErrors,
  createKey,
  deploy,
  launchBrowser,
  scanA11y,
  screenshot,
  serveHtml,
  signUp,
  startSkython,
  viewports,
  watchConsole,
} from "./harness.mjs";

const GREET = "def greet(name: str) -> str:\n    return f'hello {name}'\n";
const DOUBLE = "def double(x: int) -> int:\n    return 2 * x\n";

let skython;
let browser;
let key;

before(async () => {
  skython = await startSkython();
  const token = await signUp(skython.url, "ada", "correct horse battery");
  await deploy(skython.url, token, { endpoint: "greet", source: GREET, access: "public", visibility: "public" });
  await deploy(skython.url, token, { endpoint: "double", source: DOUBLE, access: "key" });
  key = await createKey(skython.url, token, "cors-page", ["ada/double"]);
  browser = await launchBrowser();
});

afterEach((t) => skython?.printLogIfFailed(t));

after(async () => {
  await browser?.close();
  await skython?.stop();
});

// The page calls both endpoints as any web app would (JSON bodies, so each call is preflighted)
// and writes each answer, or the error it got, into its own labelled output.
function page({ skythonUrl, apiKey }) {
  const config = JSON.stringify({ skythonUrl, apiKey });
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>A page of another origin</title><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<main>
<h1>Calling Skython from another origin</h1>
<p><label for="origin">This page's origin</label>: <output id="origin"></output></p>
<p><label for="public">Public endpoint</label>: <output id="public">waiting</output></p>
<p><label for="gated">Gated endpoint</label>: <output id="gated">waiting</output></p>
</main>
<script type="module">
const { skythonUrl, apiKey } = ${config};
document.getElementById("origin").textContent = location.origin;

async function call(path, args, headers) {
  const r = await fetch(skythonUrl + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(args),
  });
  const body = await r.json();
  if (!r.ok) return "error " + r.status + " " + body.error.code + ": " + body.error.message;
  return JSON.stringify(body);
}

async function show(id, answer) {
  try {
    document.getElementById(id).textContent = await answer;
  } catch (e) {
    document.getElementById(id).textContent = "failed: " + e;
  }
}

await Promise.all([
  show("public", call("/fn/ada/greet", { name: "web" }, {})),
  show("gated", call("/fn/ada/double", { x: 21 }, apiKey ? { "x-api-key": apiKey } : {})),
]);
document.body.dataset.done = "yes";
</script>
</body>
</html>`;
}

// Opens the page and waits for both calls to end; returns the page, its console errors and the
// CORS headers of each answer from Skython (for the failure messages).
async function openPage(pageUrl) {
  const context = await browser.newContext(viewports.desktop);
  const tab = await context.newPage();
  const errors = watchConsole(tab);
  const seen = [];
  tab.on("response", (r) => {
    if (!r.url().startsWith(skython.url)) return;
    const cors = Object.entries(r.headers()).filter(([k]) => k.startsWith("access-control-"));
    seen.push(`${r.request().method()} ${r.url()} → ${r.status()} ${JSON.stringify(Object.fromEntries(cors))}`);
  });
  tab.on("requestfailed", (r) => seen.push(`${r.method()} ${r.url()} failed: ${r.failure()?.errorText}`));
  await tab.goto(pageUrl);
  await tab.waitForFunction(() => document.body.dataset.done === "yes", null, { timeout: 30_000 });
  return { tab, errors, seen, context };
}

test("a page of another origin gets both the public and the key-gated answer", async () => {
  const site = await serveHtml({ "/": page({ skythonUrl: skython.url, apiKey: key }) });
  try {
    assert.notEqual(new URL(site.url).origin, new URL(skython.url).origin);
    const { tab, errors, seen, context } = await openPage(site.url);
    const headers = `Skython's answers:\n  ${seen.join("\n  ")}`;
    assert.equal(await tab.getByLabel("This page's origin").textContent(), site.url);
    assert.equal(await tab.getByLabel("Public endpoint").textContent(), '"hello web"', headers);
    assert.equal(await tab.getByLabel("Gated endpoint").textContent(), "42", headers);
    await screenshot(tab, "cors");
    await scanA11y(tab, "the CORS page");
    assertNoConsoleErrors(errors);
    await context.close();
  } finally {
    await site.close();
  }
});

test("a page of another origin can read the key_required refusal of a gated call without a key", async () => {
  const site = await serveHtml({ "/": page({ skythonUrl: skython.url, apiKey: null }) });
  try {
    const { tab, errors, seen, context } = await openPage(site.url);
    const headers = `Skython's answers:\n  ${seen.join("\n  ")}`;
    const gated = await tab.getByLabel("Gated endpoint").textContent();
    assert.match(gated, /^error 401 key_required: ada\/double needs an API key/, headers);
    assert.equal(await tab.getByLabel("Public endpoint").textContent(), '"hello web"', headers);
    await screenshot(tab, "cors-refused");
    // Chromium logs every 4xx answer to fetch; a blocked (unreadable) answer would log a CORS error.
    assertNoConsoleErrors(errors, { allow: [/Failed to load resource: the server responded with a status of 401/] });
    await context.close();
  } finally {
    await site.close();
  }
});
