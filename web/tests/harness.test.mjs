// The harness's own checks, each shown to fail where it must: pages with a known fault, served
// by a tiny local server, and a real server started and stopped.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import {
  assertNoConsoleErrors,
  launchBrowser,
  scanA11y,
  screenshot,
  serveHtml,
  signUp,
  startSkython,
  viewports,
  watchConsole,
} from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(() => browser?.close());

const doc = (body) =>
  `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Harness check</title>` +
  `<meta name="viewport" content="width=device-width, initial-scale=1">` +
  `<link rel="icon" href="data:,"></head><body><main>${body}</main></body></html>`;

// Opens `html` from a local server in a new context (its console watched from the start);
// `close` ends both.
async function open(html, viewport = viewports.desktop) {
  const site = await serveHtml({ "/": html });
  const context = await browser.newContext(viewport);
  const page = await context.newPage();
  const errors = watchConsole(page);
  await page.goto(site.url);
  const close = async () => {
    await context.close();
    await site.close();
  };
  return { page, errors, close };
}

test("assertNoConsoleErrors fails on a console.error and on an uncaught exception, listing both", async () => {
  const { errors, close } = await open(
    doc(`<h1>Faulty</h1><script>console.error("the broken thing");</script>
      <script>throw new Error("the uncaught thing");</script>`),
  );
  assert.throws(
    () => assertNoConsoleErrors(errors),
    /2 error\(s\):\n {2}console\.error: the broken thing.*\n {2}uncaught Error: the uncaught thing/,
  );
  await close();
});

test("assertNoConsoleErrors passes errors it is told to allow, and ignores logs and warnings", async () => {
  const { errors, close } = await open(
    doc(`<h1>Noisy</h1><script>
      console.log("a log"); console.warn("a warning"); console.error("expected noise");
    </script>`),
  );
  assert.equal(errors.length, 1, errors.join("\n"));
  assertNoConsoleErrors(errors, { allow: [/expected noise/] });
  await close();
});

test("scanA11y fails on an unlabelled input and low-contrast text, naming rules and elements", async () => {
  const { page, close } = await open(
    doc(`<h1>Search</h1><input id="query" type="text">
      <p id="faint" style="color:#c8c8c8;background:#ffffff">Hard to read</p>`),
  );
  await assert.rejects(scanA11y(page, "the faulty page"), (e) => {
    assert.match(e.message, /accessibility scan of the faulty page/);
    assert.match(e.message, /label \(critical\): .* — at #query/);
    assert.match(e.message, /color-contrast \(serious\): .* — at #faint/);
    return true;
  });
  await close();
});

test("scanA11y passes a page with labelled controls and readable text", async () => {
  const { page, close } = await open(
    doc(`<h1>Search</h1><label for="query">Search functions</label> <input id="query" type="text">
      <p style="color:#222222;background:#ffffff">Easy to read</p>`),
  );
  const result = await scanA11y(page, "the good page");
  assert.ok(result.passes.some((p) => p.id === "label"), "axe checked the labels");
  await close();
});

test("screenshot names the file for the phone viewport and writes a PNG of its width", async () => {
  const { page, close } = await open(doc("<h1>Phone</h1>"), viewports.phone);
  const path = await screenshot(page, "harness-check");
  assert.match(path, /test-results\/screenshots\/harness-check-phone\.png$/);
  const png = readFileSync(path);
  assert.equal(png.subarray(1, 4).toString(), "PNG");
  assert.equal(png.readUInt32BE(16), 375, "the IHDR width");
  await close();
});

test("startSkython serves until stopped, then the server is gone and its data dir removed", async () => {
  const server = await startSkython({ signup: "closed" });
  let stopped = false;
  try {
    assert.equal((await fetch(`${server.url}/readyz`)).status, 200);
    // The signup option reaches the server, and signUp reports the refusal with its answer.
    await assert.rejects(signUp(server.url, "ada", "correct horse battery"), /expected 201, got 403: .*"code"/);
    assert.ok(existsSync(server.dataDir));
    await server.stop();
    stopped = true;
    await assert.rejects(fetch(`${server.url}/readyz`), /fetch failed/);
    assert.ok(!existsSync(server.dataDir), `${server.dataDir} is removed`);
  } finally {
    if (!stopped) await server.stop();
  }
});
