// The editor: write a function, see problems on their lines as you type, try it with arguments
// from a form generated from its signature, deploy it. The skybox sits beside it (left on a
// desktop, a tab on a phone).
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, type Signature, type TestRunResponse, api, call } from "../api/client";
import { ArgsForm, useArgsForm } from "../args";
import type { Problem } from "../code";
import { PythonEditor } from "../python-editor";
import { navigate } from "../router";
import { ErrorMessage, Field, Spinner, Tabs, ms, useAsync, useTitle } from "../ui";
import { SkyboxSearch } from "./skybox";

const STARTER = `def main(name: str = "world") -> str:
    """Say hello to someone."""
    return f"Hello, {name}!"
`;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

export function EditorPage({ user, owner, endpoint }: { user: string; owner?: string; endpoint?: string }) {
  const existing = useAsync(
    () =>
      owner && endpoint
        ? call(api.GET("/api/v1/functions/{owner}/{endpoint}", { params: { path: { owner, endpoint } } }))
        : Promise.resolve(null),
    [owner, endpoint],
  );
  useTitle(endpoint ? `Edit ${endpoint}` : "New function");
  if (existing.loading) return <Spinner label="Loading the function…" />;
  if (existing.error) return <ErrorMessage error={existing.error} title="Could not open the function" />;
  const f = existing.data;
  return (
    <Editor
      user={user}
      initial={{
        source: f?.source ?? STARTER,
        endpoint: f?.endpoint ?? "",
        description: f?.description ?? "",
        tags: (f?.tags ?? []).join(", "),
        visibility: f?.visibility ?? "private",
        access: f?.effectiveAccess ?? "key", // a new function is private, so callers need a key
        owner: f?.owner ?? user,
      }}
      editing={!!f}
    />
  );
}

interface Draft {
  source: string;
  endpoint: string;
  description: string;
  tags: string;
  visibility: "private" | "public";
  access: "public" | "key";
  owner: string;
}

function Editor({ user, initial, editing }: { user: string; initial: Draft; editing: boolean }) {
  const [draft, setDraft] = useState<Draft>(initial);
  const [problems, setProblems] = useState<(Problem & { code?: string })[]>([]);
  const [signature, setSignature] = useState<Signature | null>(null);
  const [checking, setChecking] = useState(false);
  const [checkError, setCheckError] = useState<unknown>(null);
  const [tab, setTab] = useState("code");
  const update = (d: Partial<Draft>) => setDraft((old) => ({ ...old, ...d }));

  // Problems as the person types: the server's own check, a moment after typing stops.
  const source = draft.source;
  const generation = useRef(0);
  useEffect(() => {
    const mine = ++generation.current;
    const t = setTimeout(async () => {
      setChecking(true);
      try {
        const r = await call(api.POST("/api/v1/check", { body: { source } }));
        if (mine !== generation.current) return;
        setProblems(r.problems);
        if (r.signature) setSignature(r.signature);
        setCheckError(null);
      } catch (e) {
        // The check itself failed (not the code): say so, and keep the last marks.
        if (mine === generation.current) setCheckError(e);
      } finally {
        if (mine === generation.current) setChecking(false);
      }
    }, 400);
    return () => clearTimeout(t);
  }, [source]);

  return (
    <div class="ide">
      <Tabs
        label="Editor or skybox"
        idPrefix="ide"
        tabs={[
          { id: "code", title: "Editor" },
          { id: "skybox", title: "Skybox" },
        ]}
        selected={tab}
        onSelect={setTab}
        panelOf={(id) => `ide-panel-${id}`}
      />
      <aside id="ide-panel-skybox" class={"ide-skybox" + (tab === "skybox" ? " shown" : "")} aria-labelledby="ide-skybox-title">
        <h2 id="ide-skybox-title">Skybox</h2>
        <SkyboxSearch compact headingLevel={3} />
      </aside>
      <div id="ide-panel-code" class={"ide-main" + (tab === "code" ? " shown" : "")}>
        <section class="ide-code" aria-labelledby="ide-code-title">
          <div class="row">
            <h1 id="ide-code-title">{editing ? `${draft.owner}/${draft.endpoint}` : "New function"}</h1>
            <span class="muted" role="status" aria-live="polite">
              {checking ? "Checking…" : problems.length ? `${problems.length} problem${problems.length > 1 ? "s" : ""}` : signature ? "No problems" : ""}
            </span>
          </div>
          <PythonEditor label="Python source" value={draft.source} onChange={(source) => update({ source })} problems={problems} />
          <ErrorMessage error={checkError} title="Could not check the code" />
          {problems.length > 0 && (
            <ul class="problems" aria-label="Problems">
              {problems.map((p) => (
                <li>
                  {p.line ? <strong>Line {p.line}: </strong> : null}
                  {p.message}
                </li>
              ))}
            </ul>
          )}
        </section>
        <TestPanel draft={draft} signature={signature} onProblems={setProblems} />
        <DeployForm user={user} draft={draft} update={update} editing={editing} onProblems={setProblems} />
      </div>
    </div>
  );
}

function TestPanel({ draft, signature, onProblems }: { draft: Draft; signature: Signature | null; onProblems: (p: Problem[]) => void }) {
  const form = useArgsForm(signature);
  const [result, setResult] = useState<TestRunResponse | null>(null);
  const run = form.submit(async (args) => {
    setResult(null);
    try {
      setResult(await call(api.POST("/api/v1/test-run", { body: { source: draft.source, args, endpoint: draft.endpoint || null } })));
    } catch (err) {
      if (err instanceof ApiError && err.body?.line) onProblems([{ message: err.message, line: err.body.line, column: err.body.column }]);
      throw err;
    }
  });

  return (
    <section class="panel" aria-labelledby="test-title">
      <h2 id="test-title">Test</h2>
      <form onSubmit={run} noValidate>
        <ArgsForm signature={signature} values={form.values} errors={form.errors} onChange={form.setValues} idPrefix="arg" />
        <button type="submit" disabled={form.busy}>
          {form.busy ? "Running…" : "Run test"}
        </button>
      </form>
      {form.busy && <Spinner label="Running the draft in a new worker…" />}
      <ErrorMessage error={form.error} title="The test could not run" />
      {result && <TestResult r={result} />}
    </section>
  );
}

function TestResult({ r }: { r: TestRunResponse }) {
  const ok = r.status < 400;
  const err = r.error as { code?: string; type?: string; message?: string } | undefined;
  return (
    <div class="result" role="region" aria-label="Test result">
      <p class="row">
        <span class={"badge " + (ok ? "ok" : "bad")}>{ok ? `${r.status} OK` : `${r.status} ${err?.code ?? "error"}`}</span>
        <span class="muted">
          {ms(r.durationMs)} · cold start (each test runs in a new worker)
        </span>
      </p>
      {ok ? (
        <>
          <h3>Result</h3>
          <pre aria-label="Result value">{JSON.stringify(r.result, null, 2)}</pre>
        </>
      ) : (
        <>
          <h3>Error</h3>
          <pre aria-label="Error">{[err?.type, err?.message].filter(Boolean).join(": ") || JSON.stringify(r.error)}</pre>
        </>
      )}
      <h3>Printed output</h3>
      <pre aria-label="Printed output">{r.logs || "(nothing printed)"}</pre>
    </div>
  );
}

function DeployForm({
  user,
  draft,
  update,
  editing,
  onProblems,
}: {
  user: string;
  draft: Draft;
  update: (d: Partial<Draft>) => void;
  editing: boolean;
  onProblems: (p: Problem[]) => void;
}) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [fieldErrors, setFieldErrors] = useState<Record<string, string>>({});

  const deploy = async (e: Event) => {
    e.preventDefault();
    setError(null);
    const endpoint = draft.endpoint.trim();
    if (!DNS_LABEL.test(endpoint) || endpoint.length > 63) {
      setFieldErrors({
        endpoint: "Use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit (e.g. hello-world).",
      });
      return;
    }
    setFieldErrors({});
    setBusy(true);
    const body = {
      owner: draft.owner,
      endpoint,
      source: draft.source,
      description: draft.description.trim(),
      tags: draft.tags
        .split(",")
        .map((t) => t.trim())
        .filter(Boolean),
      visibility: draft.visibility,
      access: draft.access,
    };
    try {
      const f = editing
        ? await call(api.PUT("/api/v1/functions/{owner}/{endpoint}", { params: { path: { owner: draft.owner, endpoint } }, body }))
        : await call(api.POST("/api/v1/functions", { body }));
      navigate(`/f/${f.owner}/${f.endpoint}?deployed=1`);
    } catch (err) {
      setBusy(false);
      if (err instanceof ApiError) {
        if (err.body?.line) onProblems([{ message: err.message, line: err.body.line, column: err.body.column }]);
        const fields: Record<string, string> = {};
        for (const f of (err.body?.fields ?? []) as { field?: string; message?: string }[]) {
          const name = (f.field ?? "").replace(/\[\d+\]$/, "");
          if (name && f.message) fields[name] = f.message;
        }
        if (err.code === "conflict") fields.endpoint = err.message;
        setFieldErrors(fields);
        const shown = ["endpoint", "description", "tags"].some((k) => fields[k]);
        setError(shown ? null : err);
      } else setError(err);
    }
  };

  return (
    <section class="panel" aria-labelledby="deploy-title">
      <h2 id="deploy-title">Deploy</h2>
      <form onSubmit={deploy} noValidate>
        <Field
          id="deploy-endpoint"
          label="Endpoint name"
          error={fieldErrors.endpoint}
          hint={draft.endpoint ? `Called at ${location.origin}/fn/${user}/${draft.endpoint}` : "Lowercase letters, digits and '-'."}
        >
          {(a) => (
            <input
              {...a}
              required
              readOnly={editing}
              autocapitalize="none"
              spellcheck={false}
              value={draft.endpoint}
              onInput={(e) => update({ endpoint: e.currentTarget.value })}
            />
          )}
        </Field>
        <Field id="deploy-description" label="Description" error={fieldErrors.description}>
          {(a) => <textarea {...a} rows={2} value={draft.description} onInput={(e) => update({ description: e.currentTarget.value })} />}
        </Field>
        <Field id="deploy-tags" label="Tags" error={fieldErrors.tags} hint="Separated by commas.">
          {(a) => <input {...a} value={draft.tags} onInput={(e) => update({ tags: e.currentTarget.value })} />}
        </Field>
        <fieldset>
          <legend>Visibility</legend>
          <label class="check">
            <input type="radio" name="visibility" checked={draft.visibility === "private"} onChange={() => update({ visibility: "private" })} />
            Private — only you see it
          </label>
          <label class="check">
            <input
              type="radio"
              name="visibility"
              checked={draft.visibility === "public"}
              onChange={() => update({ visibility: "public", access: "public" })}
            />
            Public — listed in the skybox
          </label>
        </fieldset>
        <fieldset>
          <legend>Who may call it</legend>
          <label class="check">
            <input type="radio" name="access" checked={draft.access === "public"} onChange={() => update({ access: "public" })} />
            Anyone, without a key
          </label>
          <label class="check">
            <input type="radio" name="access" checked={draft.access === "key"} onChange={() => update({ access: "key" })} />
            Only callers with an API key
          </label>
        </fieldset>
        <ErrorMessage error={error} title="Not deployed" />
        <button type="submit" disabled={busy}>
          {busy ? "Deploying…" : editing ? "Deploy new version" : "Deploy"}
        </button>
        {busy && <Spinner label="Checking and deploying…" />}
      </form>
    </section>
  );
}
