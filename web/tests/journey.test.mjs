// The whole journey in a real Chromium, as two new visitors:
// A signs up, writes a function in the editor, tests it through the generated form, sees a
// syntax error on its line, deploys it as public, copies the curl snippet and runs it;
// B signs up, finds it in the skybox by a word of its description, clones it, calls the clone,
// and cannot see A's private function. The browser console must stay free of errors.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { assertNoConsoleErrors, launchBrowser, screenshot, startSkython, viewports, watchConsole } from "./harness.mjs";

const run = promisify(execFile);
let skython, browser;
const word = "zephyr" + Math.random().toString(36).slice(2, 7);
const names = { a: "ada" + Date.now().toString(36), b: "bob" + Date.now().toString(36) };
const endpoint = "greet";
const PASSWORD = "correct horse battery";

before(async () => {
  skython = await startSkython();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await skython?.stop();
});

/** Types into the editor as a person would (CodeMirror indents after a colon by itself). */
async function typeSource(page, lines) {
  const editor = page.getByRole("textbox", { name: "Python source" });
  await editor.click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  for (const [i, line] of lines.entries()) {
    if (i > 0) await page.keyboard.press("Enter");
    await page.keyboard.type(line);
  }
  return editor;
}

async function signUp(page, name) {
  await page.getByLabel("Name", { exact: true }).fill(name);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign up" }).click();
}

test("two new visitors: A deploys and calls a function from the editor, B finds, clones and calls it", { timeout: 180_000 }, async (t) => {
  // ---- A ----
  const a = await browser.newContext({ ...viewports.desktop, permissions: ["clipboard-read", "clipboard-write"] });
  const page = await a.newPage();
  page.setDefaultTimeout(20_000);
  const consoleA = watchConsole(page);
  const started = Date.now();
  await page.goto(skython.url + "/");
  await page.getByRole("link", { name: /start writing/i }).click();
  await signUp(page, names.a);
  await page.getByRole("heading", { name: "New function" }).waitFor();

  const editor = await typeSource(page, [
    "def main(name: str, times: int = 2) -> str:",
    'print("greeting", name)',
    'return " ".join(["hello " + name] * times)',
  ]);
  assert.equal(
    await editor.evaluate((el) => [...el.querySelectorAll(".cm-line")].map((l) => l.textContent).join("\n")),
    'def main(name: str, times: int = 2) -> str:\n    print("greeting", name)\n    return " ".join(["hello " + name] * times)',
  );
  // Highlighting happened: keywords and strings are spans styled unlike plain names.
  const colors = await editor.evaluate((el) => {
    const color = (text) => {
      const span = [...el.querySelectorAll(".cm-line span")].find((s) => s.textContent === text);
      return span ? getComputedStyle(span).color : null;
    };
    return { def: color("def"), ret: color("return"), str: color('"greeting"'), plain: getComputedStyle(el).color };
  });
  assert.ok(colors.def && colors.def !== colors.plain, `"def" is highlighted: ${JSON.stringify(colors)}`);
  assert.ok(colors.ret && colors.ret !== colors.plain, `"return" is highlighted: ${JSON.stringify(colors)}`);
  assert.ok(colors.str && colors.str !== colors.plain && colors.str !== colors.def, `strings are highlighted: ${JSON.stringify(colors)}`);

  // The test form comes from the signature: a text field for name, a number for times (default 2).
  const nameField = page.getByLabel("name (str)");
  await nameField.waitFor();
  assert.equal(await page.getByLabel("times (int) — optional").inputValue(), "2");
  await nameField.fill("Ada");
  await page.getByRole("button", { name: "Run test" }).click();
  const result = page.getByRole("region", { name: "Test result" });
  await result.getByLabel("Result value").filter({ hasText: "hello Ada hello Ada" }).waitFor();
  assert.match(await result.getByLabel("Printed output").textContent(), /greeting Ada/);
  assert.match(await result.textContent(), /\d+(\.\d)? m?s/);

  // A syntax error is marked on its line (line 4), then fixed.
  await editor.click();
  await page.keyboard.press("Control+End");
  await page.keyboard.press("Enter");
  await page.keyboard.type("return name +");
  await page.getByRole("list", { name: "Problems" }).filter({ hasText: "Line 4" }).waitFor();
  await editor.locator(".cm-line .cm-lintRange-error").first().waitFor();
  const markedLines = await editor.evaluate((el) =>
    [...el.querySelectorAll(".cm-line")].flatMap((l, i) => (l.querySelector(".cm-lintRange-error") ? [i + 1] : [])),
  );
  assert.deepEqual(markedLines, [4]);
  await screenshot(page, "editor-syntax-error");
  await page.keyboard.press("Shift+Home");
  await page.keyboard.press("Backspace");
  await page.keyboard.press("Backspace");
  await page.keyboard.press("Backspace");
  await page.getByRole("status").filter({ hasText: "No problems" }).waitFor();

  // Deploy as public.
  await page.getByLabel("Endpoint name").fill(endpoint);
  await page.getByLabel("Description").fill(`Greets someone, ${word} style`);
  await page.getByLabel("Tags").fill("demo, greeting");
  await page.getByLabel("Public — listed in the skybox").check();
  await page.getByLabel("Anyone, without a key").check();
  await page.getByRole("button", { name: "Deploy", exact: true }).click();
  await page.getByRole("status").filter({ hasText: "Deployed" }).waitFor();

  // Copy the curl snippet and run it, as the person would in a terminal.
  await page.getByRole("button", { name: "Copy the curl snippet" }).click();
  const snippet = await page.evaluate(() => navigator.clipboard.readText());
  assert.match(snippet, new RegExp(`^curl .*/fn/${names.a}/${endpoint}`));
  const { stdout } = await run("sh", ["-c", snippet], { timeout: 30_000 });
  const seconds = (Date.now() - started) / 1000;
  assert.match(JSON.parse(stdout), /^hello /);
  console.log(`A's time from the front page to the first successful call: ${seconds.toFixed(1)} s (target 60 s)`);
  t.diagnostic(`front page to first call: ${seconds.toFixed(1)} s`);
  assert.ok(seconds <= 60, `A took ${seconds.toFixed(1)} s, over the 60 s target`);
  await screenshot(page, "function-page-after-deploy");

  // A also has a private function, which B must not see.
  const privateSpec = {
    owner: names.a,
    endpoint: "secret-sauce",
    source: "def main():\n    return 42\n",
    description: `the private ${word} recipe`,
    visibility: "private",
  };
  const made = await page.request.post(skython.url + "/api/v1/functions", { data: privateSpec, headers: { origin: skython.url } });
  assert.equal(made.status(), 201, await made.text());
  assertNoConsoleErrors(consoleA);

  // ---- B ----
  const b = await browser.newContext(viewports.desktop);
  const pageB = await b.newPage();
  pageB.setDefaultTimeout(20_000);
  const consoleB = watchConsole(pageB);
  await pageB.goto(skython.url + "/");
  await pageB.getByRole("link", { name: "Sign up" }).click();
  await signUp(pageB, names.b);
  await pageB.getByRole("heading", { name: "New function" }).waitFor();
  await pageB.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Skybox" }).click();
  await pageB.getByLabel("Search functions").fill(word);
  const results = pageB.getByRole("list", { name: "Search results" });
  await results.getByRole("link", { name: `${names.a}/${endpoint}` }).click();
  // The public page shows the code and the arguments.
  await pageB.getByRole("heading", { name: `${names.a}/${endpoint}` }).waitFor();
  assert.match(await pageB.getByRole("textbox", { name: `Source of ${names.a}/${endpoint}` }).textContent(), /def main/);
  await pageB.getByRole("rowheader", { name: "times" }).waitFor();
  await pageB.getByRole("button", { name: "Clone" }).click();
  await pageB.getByRole("heading", { name: `${names.b}/${endpoint}` }).waitFor();
  assert.match(await pageB.getByText("cloned from").textContent(), /cloned from/);

  // Call the clone: private, but callable without a key as the original was.
  await pageB.getByLabel("name (str)").fill("Bob");
  await pageB.getByRole("button", { name: "Call endpoint" }).click();
  const answer = pageB.getByRole("region", { name: "Call result" });
  await answer.getByText("HTTP 200").waitFor();
  assert.match(await answer.getByLabel("Response body").textContent(), /hello Bob hello Bob/);

  // The skybox does not show A's private function, and its page is not found for B.
  await pageB.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Skybox" }).click();
  await pageB.getByLabel("Search functions").fill("recipe " + word);
  await pageB.getByRole("status").filter({ hasText: "No public function matches" }).waitFor();
  await pageB.goto(`${skython.url}/f/${names.a}/secret-sauce`);
  await pageB.getByRole("heading", { name: "Function not found" }).waitFor();
  const listing = await pageB.request.get(`${skython.url}/api/v1/functions?owner=${names.a}`);
  const visible = listing.ok() ? (await listing.json()).items.map((f) => f.endpoint) : [];
  assert.ok(!visible.includes("secret-sauce"), `B sees ${visible}`);
  // The one error the console may show: the not-found answer for A's private function.
  assertNoConsoleErrors(consoleB, { allow: [new RegExp(`404`)] });
  await a.close();
  await b.close();
});
