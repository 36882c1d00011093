// Every page at desktop and phone widths: a screenshot (a test artefact) and an accessibility
// scan with no serious or critical violation; and failures shown as readable messages.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { assertNoConsoleErrors, deploy, launchBrowser, scanA11y, screenshot, signUp, startSkython, viewports, watchConsole } from "./harness.mjs";

const PASSWORD = "correct horse battery";
let skython, browser, owner;

before(async () => {
  skython = await startSkython();
  browser = await launchBrowser();
  owner = "pat" + Date.now().toString(36);
  const token = await signUp(skython.url, owner, PASSWORD);
  await deploy(skython.url, token, {
    owner,
    endpoint: "celsius",
    source:
      'def main(fahrenheit: float, precision: int = 1) -> float:\n    """Fahrenheit to Celsius."""\n    print("converting", fahrenheit)\n    return round((fahrenheit - 32) * 5 / 9, precision)\n',
    description: "Converts temperatures from Fahrenheit to Celsius",
    tags: ["units", "temperature"],
    visibility: "public",
    access: "public",
  });
  // One call, so that the owner's pages have a call, its logs and its counts to show.
  const called = await fetch(`${skython.url}/fn/${owner}/celsius`, { method: "POST", body: '{"fahrenheit": 212}' });
  assert.equal(called.status, 200);
});
after(async () => {
  await browser?.close();
  await skython?.stop();
});

/** A context logged in as `name` (the owner by default), by the API (the cookie), as the
 * login page would. */
async function ownerContext(viewport, name = owner) {
  const ctx = await browser.newContext(viewport);
  const r = await ctx.request.post(`${skython.url}/api/v1/sessions`, {
    data: { name, password: PASSWORD },
    headers: { origin: skython.url },
  });
  assert.equal(r.status(), 201);
  await ctx.addInitScript((n) => localStorage.setItem("skython.user", n), name);
  return ctx;
}

/** Deploys one of the owner's functions with the context's session cookie. */
async function deployAsOwner(ctx, spec) {
  const made = await ctx.request.post(`${skython.url}/api/v1/functions`, { data: { owner, ...spec }, headers: { origin: skython.url } });
  assert.equal(made.status(), 201, await made.text());
}

/** Presses "Call endpoint" on a function's page; the answer's body once "HTTP 200" shows. */
async function callFromPage(page) {
  await page.getByRole("button", { name: "Call endpoint" }).click();
  const answer = page.getByRole("region", { name: "Call result" });
  await answer.getByText("HTTP 200").waitFor();
  return (await answer.getByLabel("Response body").textContent()).trim();
}

const PAGES = [
  { name: "front", path: "/", ready: { role: "heading", name: /HTTP endpoint/ } },
  { name: "sign-up", path: "/signup", ready: { role: "heading", name: "Create your account" } },
  { name: "log-in", path: "/login", ready: { role: "heading", name: "Log in" } },
  { name: "skybox", path: "/skybox?q=celsius", ready: { role: "link", name: /\/celsius$/ } },
  { name: "public-function", path: () => `/f/${owner}/celsius`, ready: { role: "heading", name: "Arguments and return value" } },
  { name: "not-found", path: "/no/such/page", ready: { role: "heading", name: "Page not found" } },
  { name: "my-functions", path: "/functions", owner: true, ready: { role: "link", name: "celsius" } },
  { name: "editor", path: "/new", owner: true, ready: { role: "heading", name: "Test" } },
  { name: "own-function", path: () => `/f/${owner}/celsius`, owner: true, ready: { role: "heading", name: "Recent calls" } },
];

for (const [size, viewport] of Object.entries(viewports)) {
  for (const p of PAGES) {
    test(`the ${p.name} page at ${size} width has a screenshot and no serious accessibility violation`, async () => {
      const ctx = p.owner ? await ownerContext(viewport) : await browser.newContext(viewport);
      const page = await ctx.newPage();
      const errors = watchConsole(page);
      const path = typeof p.path === "function" ? p.path() : p.path;
      await page.goto(skython.url + path);
      await page.getByRole(p.ready.role, { name: p.ready.name }).first().waitFor();
      await page.getByRole("status").filter({ hasText: /…$/ }).waitFor({ state: "detached" }).catch(() => {});
      await screenshot(page, p.name, size);
      await scanA11y(page, `${p.name} (${size})`);
      // The not-found page answers 404 on purpose.
      assertNoConsoleErrors(errors, { allow: p.name === "not-found" ? [/404/] : [] });
      await ctx.close();
    });
  }
}

test("the editor shows the skybox as a tab on a phone", async () => {
  const ctx = await ownerContext(viewports.phone);
  const page = await ctx.newPage();
  await page.goto(skython.url + "/new");
  const search = page.getByLabel("Search functions");
  await page.getByRole("textbox", { name: "Python source" }).waitFor();
  assert.equal(await search.isVisible(), false);
  await page.getByRole("tab", { name: "Skybox" }).click();
  await search.fill("celsius");
  await page.getByRole("link", { name: `${owner}/celsius` }).waitFor();
  assert.equal(await page.getByRole("textbox", { name: "Python source" }).isVisible(), false);
  await ctx.close();
});

test("the skybox says so when the server cannot be reached", async () => {
  const ctx = await browser.newContext(viewports.desktop);
  const page = await ctx.newPage();
  await page.route("**/api/v1/skybox*", (route) => route.abort("connectionrefused"));
  await page.goto(skython.url + "/skybox");
  await page.getByRole("alert").filter({ hasText: "cannot be reached" }).waitFor();
  await ctx.close();
});

test("a server error on a function page is a readable message, not a blank page", async () => {
  const ctx = await browser.newContext(viewports.desktop);
  const page = await ctx.newPage();
  await page.route("**/api/v1/functions/**", (route) =>
    route.fulfill({ status: 500, contentType: "text/plain", body: "Internal Server Error" }),
  );
  await page.goto(`${skython.url}/f/${owner}/celsius`);
  await page.getByRole("alert").filter({ hasText: "The server failed (HTTP 500)" }).waitFor();
  await page.getByRole("heading", { name: "Could not load the function" }).waitFor();
  await ctx.close();
});

test("the API's own error message is shown next to the field it is about", async () => {
  const ctx = await browser.newContext(viewports.desktop);
  const page = await ctx.newPage();
  await page.goto(skython.url + "/signup");
  await page.getByLabel("Name", { exact: true }).fill(owner);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign up" }).click();
  const field = page.getByLabel("Name", { exact: true });
  await page.locator("#auth-name-error").filter({ hasText: /taken/ }).waitFor();
  assert.equal(await field.getAttribute("aria-invalid"), "true");
  assert.match(await field.getAttribute("aria-describedby"), /auth-name-error/);
  await ctx.close();
});

test("the owner rolls back to an earlier version from the function page", async () => {
  const token = await signUp(skython.url, "rita" + Date.now().toString(36), PASSWORD);
  const me = await (await fetch(`${skython.url}/api/v1/me`, { headers: { authorization: `Bearer ${token}` } })).json();
  const spec = (answer) => ({ owner: me.name, endpoint: "answer", source: `def main():\n    return ${answer}\n`, access: "public" });
  await deploy(skython.url, token, spec(1));
  const second = await fetch(`${skython.url}/api/v1/functions/${me.name}/answer`, {
    method: "PUT",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(spec(2)),
  });
  assert.equal(second.status, 200, await second.text());
  const ctx = await ownerContext(viewports.desktop, me.name);
  const page = await ctx.newPage();
  const errors = watchConsole(page);
  await page.goto(`${skython.url}/f/${me.name}/answer`);
  await page.getByRole("button", { name: "Roll back to version 1" }).click();
  await page.getByRole("button", { name: "Roll back to version 2" }).waitFor();
  const called = await fetch(`${skython.url}/fn/${me.name}/answer`, { method: "POST", body: "{}" });
  assert.equal(await called.json(), 1);
  assert.match(await page.getByRole("textbox", { name: `Source of ${me.name}/answer` }).textContent(), /return 1/);
  assertNoConsoleErrors(errors);
  await ctx.close();
});

test("a key made on a gated function's page calls it, and revoking it stops it", async () => {
  const ctx = await ownerContext(viewports.desktop);
  const page = await ctx.newPage();
  const errors = watchConsole(page);
  // A function that needs a key: its page offers to make one.
  await deployAsOwner(ctx, { endpoint: "gated", source: "def main(x: int) -> int:\n    return x * 2\n", access: "key" });
  await page.goto(`${skython.url}/f/${owner}/gated`);
  await page.getByLabel("x (int)").fill("21");
  await page.getByRole("button", { name: "Create a key" }).click();
  await page.waitForFunction(() => document.querySelector("#try-key")?.value.startsWith("sky_key_"));
  assert.equal(await callFromPage(page), "42");
  const key = await page.locator("#try-key").inputValue();
  await page.reload();
  await page.getByRole("button", { name: "Revoke key try-gated" }).click();
  await page.getByText("No keys for this function.").waitFor();
  const refused = await fetch(`${skython.url}/fn/${owner}/gated`, { method: "POST", headers: { "x-api-key": key }, body: '{"x": 1}' });
  assert.equal(refused.status, 401);
  assertNoConsoleErrors(errors);
  await ctx.close();
});

test("a visitor signs up with the keyboard alone, and the focused control is outlined", async () => {
  const ctx = await browser.newContext(viewports.desktop);
  const page = await ctx.newPage();
  const errors = watchConsole(page);
  await page.goto(skython.url + "/signup");
  await page.getByRole("heading", { name: "Create your account" }).waitFor();
  const focused = () => page.evaluate(() => document.activeElement?.getAttribute("aria-label") || document.activeElement?.textContent || document.activeElement?.id);
  // Tab from the top of the page to the name field, passing the header's links.
  for (let i = 0; i < 12 && (await focused()) !== "auth-name"; i++) await page.keyboard.press("Tab");
  assert.equal(await focused(), "auth-name");
  await page.keyboard.type("kim" + Date.now().toString(36));
  await page.keyboard.press("Tab");
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press("Tab");
  assert.equal(await focused(), "Sign up");
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, "none");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "New function" }).waitFor();
  assertNoConsoleErrors(errors);
  await ctx.close();
});

test("the owner edits a function and deploys a new version from the editor", async () => {
  const ctx = await ownerContext(viewports.desktop);
  const page = await ctx.newPage();
  page.setDefaultTimeout(20_000);
  const errors = watchConsole(page);
  await deployAsOwner(ctx, { endpoint: "shout", source: "def main(s: str) -> str:\n    return s\n", access: "public" });
  await page.goto(`${skython.url}/f/${owner}/shout`);
  await page.getByRole("link", { name: "Edit" }).click();
  await page.getByRole("heading", { name: `${owner}/shout` }).waitFor();
  assert.equal(await page.getByLabel("Endpoint name").inputValue(), "shout");
  const editor = page.getByRole("textbox", { name: "Python source" });
  await editor.getByText("return s").click();
  await page.keyboard.press("End");
  await page.keyboard.type(".upper()");
  await page.getByRole("button", { name: "Deploy new version" }).click();
  await page.getByRole("status").filter({ hasText: "Deployed" }).waitFor();
  await page.getByText("Version 2").waitFor();
  const called = await fetch(`${skython.url}/fn/${owner}/shout`, { method: "POST", body: '{"s": "hey"}' });
  assert.equal(await called.json(), "HEY");
  assertNoConsoleErrors(errors);
  await ctx.close();
});

test("a public function deployed without an access of its own is called from its page without a key", async () => {
  const ctx = await ownerContext(viewports.desktop);
  const page = await ctx.newPage();
  page.setDefaultTimeout(20_000);
  const errors = watchConsole(page);
  await deployAsOwner(ctx, { endpoint: "open-by-default", source: "def main(x: int) -> int:\n    return x + 1\n", visibility: "public" });
  await page.goto(`${skython.url}/f/${owner}/open-by-default`);
  await page.getByText("Anyone may call").waitFor();
  assert.equal(await page.getByLabel("API key", { exact: true }).count(), 0);
  await page.getByLabel("x (int)").fill("41");
  assert.equal(await callFromPage(page), "42");
  assertNoConsoleErrors(errors);
  await ctx.close();
});
