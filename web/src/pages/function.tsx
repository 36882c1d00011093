// A function's page. Everyone who may see it: its URL, snippets, OpenAPI document, arguments,
// code, a form to call it, and Clone. Its owner also: recent calls with their logs, versions
// with rollback, and API keys.
import { useState } from "preact/hooks";
import { ApiError, type FunctionView, type Snippets, api, call, callEndpoint } from "../api/client";
import { ArgsForm, useArgsForm } from "../args";
import { PythonEditor } from "../python-editor";
import { Link, navigate, useLocation } from "../router";
import { CopyButton, ErrorMessage, Spinner, TabPanel, Tabs, ms, timeAgo, useAsync, useTitle } from "../ui";

export function FunctionPage({ user, owner, endpoint }: { user: string | null; owner: string; endpoint: string }) {
  useTitle(`${owner}/${endpoint}`);
  const path = { owner, endpoint };
  const fn = useAsync(() => call(api.GET("/api/v1/functions/{owner}/{endpoint}", { params: { path } })), [owner, endpoint]);
  const deployed = useLocation().query.get("deployed");
  if (fn.loading && !fn.data) return <Spinner label="Loading the function…" />;
  if (fn.error) {
    const missing = fn.error instanceof ApiError && fn.error.status === 404;
    return (
      <section class="narrow">
        <h1>{missing ? "Function not found" : "Could not load the function"}</h1>
        {missing ? (
          <p>
            There is no function {owner}/{endpoint} that you may see. <Link href="/skybox">Search the skybox</Link>.
          </p>
        ) : (
          <ErrorMessage error={fn.error} />
        )}
      </section>
    );
  }
  const f = fn.data!;
  const stats: NonNullable<FunctionView["stats"]> = f.stats ?? { calls: 0, errors: 0, clones: 0 };
  const mine = user === f.owner;
  return (
    <article class="fn-page">
      <header class="fn-head">
        <div>
          <h1>
            {f.owner}/{f.endpoint}
          </h1>
          {f.description && <p class="lead">{f.description}</p>}
          <p class="meta">
            <span class="badge">{f.visibility === "public" ? "Public" : "Private"}</span>
            <span class="badge">{f.effectiveAccess === "public" ? "Anyone may call" : "API key needed"}</span>
            {(f.tags ?? []).map((t) => (
              <Link class="tag" href={`/skybox?tag=${encodeURIComponent(t)}`}>
                #{t}
              </Link>
            ))}
          </p>
          <p class="muted">
            {stats.calls} call{stats.calls === 1 ? "" : "s"} · last {timeAgo(stats.lastCalledAt)} · {stats.clones} clone
            {stats.clones === 1 ? "" : "s"}
            {stats.clonedFrom && (
              <>
                {" "}
                · cloned from <Link href={`/f/${stats.clonedFrom}`}>{stats.clonedFrom}</Link>
              </>
            )}
          </p>
        </div>
        <div class="actions">
          {mine ? (
            <Link class="button" href={`/edit/${f.owner}/${f.endpoint}`}>
              Edit
            </Link>
          ) : (
            <CloneButton f={f} user={user} />
          )}
        </div>
      </header>
      {deployed && mine && (
        <p class="notice" role="status">
          Deployed. Your endpoint is live at the URL below.
        </p>
      )}
      <div class="fn-grid">
        <div>
          <Endpoint f={f} />
          <TryIt f={f} mine={mine} />
          <SnippetTabs owner={owner} endpoint={endpoint} />
        </div>
        <div>
          <Contract f={f} />
          <section class="panel" aria-labelledby="code-title">
            <h2 id="code-title">Code</h2>
            <PythonEditor label={`Source of ${f.owner}/${f.endpoint}`} value={f.source} readOnly />
          </section>
        </div>
      </div>
      {mine && (
        <>
          <Invocations owner={owner} endpoint={endpoint} />
          <Versions owner={owner} endpoint={endpoint} onRollback={fn.reload} />
          <Keys owner={owner} endpoint={endpoint} />
        </>
      )}
    </article>
  );
}

function Endpoint({ f }: { f: FunctionView }) {
  const url = f.status?.url ?? `${location.origin}/fn/${f.owner}/${f.endpoint}`;
  return (
    <section class="panel" aria-labelledby="endpoint-title">
      <h2 id="endpoint-title">Endpoint</h2>
      <p class="url">
        <span class="method">POST</span> <code aria-label="Endpoint URL">{url}</code> <CopyButton text={url} label="Copy the endpoint URL" />
      </p>
      <p>
        <a href={`/api/v1/functions/${f.owner}/${f.endpoint}/openapi.json`} target="_blank" rel="noopener">
          OpenAPI document
        </a>{" "}
        <span class="muted">(import it into Postman, generate a client…)</span>
      </p>
    </section>
  );
}

function Contract({ f }: { f: FunctionView }) {
  const s = f.status?.signature;
  const params = s?.params ?? [];
  return (
    <section class="panel" aria-labelledby="contract-title">
      <h2 id="contract-title">Arguments and return value</h2>
      {s?.doc && <p>{s.doc}</p>}
      {params.length === 0 ? (
        <p class="muted">No arguments: send an empty JSON object.</p>
      ) : (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Argument</th>
                <th scope="col">Type</th>
                <th scope="col">Default</th>
              </tr>
            </thead>
            <tbody>
              {params.map((p) => (
                <tr>
                  <th scope="row">
                    <code>{p.name}</code>
                  </th>
                  <td>{p.annotation ? <code>{p.annotation}</code> : "any JSON"}</td>
                  <td>{p.default != null ? <code>{p.default}</code> : "required"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <p>
        Returns: {s?.returns ? <code>{s.returns}</code> : "any JSON value"}
      </p>
    </section>
  );
}

function TryIt({ f, mine }: { f: FunctionView; mine: boolean }) {
  const signature = f.status?.signature;
  const form = useArgsForm(signature);
  const [key, setKey] = useState("");
  const [answer, setAnswer] = useState<Awaited<ReturnType<typeof callEndpoint>> | null>(null);
  const needsKey = f.effectiveAccess === "key";
  const run = form.submit(async (args) => setAnswer(await callEndpoint(f.owner, f.endpoint, args, needsKey ? key.trim() : undefined)));
  const newKey = async () => {
    form.setError(null);
    try {
      const k = await call(api.POST("/api/v1/keys", { body: { name: `try-${f.endpoint}`, functions: [`${f.owner}/${f.endpoint}`] } }));
      setKey(k.secret ?? "");
    } catch (err) {
      form.setError(err);
    }
  };

  return (
    <section class="panel" aria-labelledby="try-title">
      <h2 id="try-title">Call it</h2>
      <form onSubmit={run} noValidate>
        <ArgsForm signature={signature} values={form.values} errors={form.errors} onChange={form.setValues} idPrefix="try" />
        {needsKey && (
          <div class="field">
            <label for="try-key">API key</label>
            <div class="row">
              <input id="try-key" type="password" autocomplete="off" value={key} onInput={(e) => setKey(e.currentTarget.value)} />
              {mine && (
                <button type="button" class="secondary" onClick={newKey}>
                  Create a key
                </button>
              )}
            </div>
          </div>
        )}
        <button type="submit" disabled={form.busy}>
          {form.busy ? "Calling…" : "Call endpoint"}
        </button>
      </form>
      <ErrorMessage error={form.error} />
      {answer && (
        <div class="result" role="region" aria-label="Call result">
          <p class="row">
            <span class={"badge " + (answer.status < 400 ? "ok" : "bad")}>HTTP {answer.status}</span>
            <span class="muted">
              {ms(answer.ms)} · {answer.cold ? "cold start" : "warm"}
            </span>
          </p>
          <pre aria-label="Response body">{typeof answer.body === "string" ? answer.body : JSON.stringify(answer.body, null, 2)}</pre>
        </div>
      )}
    </section>
  );
}

const LANGUAGES: { id: keyof Snippets; title: string }[] = [
  { id: "curl", title: "curl" },
  { id: "python", title: "Python" },
  { id: "javascript", title: "JavaScript" },
  { id: "swift", title: "Swift" },
  { id: "kotlin", title: "Kotlin" },
];

function SnippetTabs({ owner, endpoint }: { owner: string; endpoint: string }) {
  const snippets = useAsync(() => call(api.GET("/api/v1/functions/{owner}/{endpoint}/snippets", { params: { path: { owner, endpoint } } })), [owner, endpoint]);
  const [lang, setLang] = useState<keyof Snippets>("curl");
  const title = LANGUAGES.find((l) => l.id === lang)!.title;
  return (
    <section class="panel" aria-labelledby="snippets-title">
      <h2 id="snippets-title">Call it from your code</h2>
      <Tabs label="Language" idPrefix="snippet" tabs={LANGUAGES} selected={lang} onSelect={(id) => setLang(id as keyof Snippets)} />
      <TabPanel idPrefix="snippet" selected={lang}>
        {snippets.loading && !snippets.data && <Spinner label="Loading snippets…" />}
        <ErrorMessage error={snippets.error} />
        {snippets.data && (
          <>
            <pre class="snippet" aria-label={`${title} snippet`}>
              {snippets.data[lang]}
            </pre>
            <CopyButton text={snippets.data[lang]} label={`Copy the ${title} snippet`} />
          </>
        )}
      </TabPanel>
    </section>
  );
}

function CloneButton({ f, user }: { f: FunctionView; user: string | null }) {
  const [name, setName] = useState(f.endpoint);
  const [asking, setAsking] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  if (!user)
    return (
      <Link class="button" href={`/signup?next=${encodeURIComponent(location.pathname)}`}>
        Sign up to clone
      </Link>
    );
  const clone = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const c = await call(
        api.POST("/api/v1/functions/{owner}/{endpoint}/clone", {
          params: { path: { owner: f.owner, endpoint: f.endpoint } },
          body: { endpoint: name.trim(), visibility: "private" },
        }),
      );
      navigate(`/f/${c.owner}/${c.endpoint}?deployed=1`);
    } catch (err) {
      setError(err);
      setAsking(true);
      setBusy(false);
    }
  };
  return (
    <form onSubmit={clone} class="clone">
      {asking && (
        <div class="field">
          <label for="clone-name">Name of your copy</label>
          <input id="clone-name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </div>
      )}
      <button type="submit" disabled={busy}>
        {busy ? "Cloning…" : "Clone"}
      </button>
      <ErrorMessage error={error} title="Not cloned" />
    </form>
  );
}

function Invocations({ owner, endpoint }: { owner: string; endpoint: string }) {
  const list = useAsync(
    () => call(api.GET("/api/v1/functions/{owner}/{endpoint}/invocations", { params: { path: { owner, endpoint }, query: { limit: 20 } } })),
    [owner, endpoint],
  );
  return (
    <section class="panel" aria-labelledby="calls-title">
      <div class="row">
        <h2 id="calls-title">Recent calls</h2>
        <button type="button" class="secondary small" onClick={list.reload}>
          Refresh
        </button>
      </div>
      {list.loading && !list.data && <Spinner label="Loading calls…" />}
      <ErrorMessage error={list.error} />
      {list.data && list.data.items.length === 0 && <p class="muted">No calls yet.</p>}
      {list.data && list.data.items.length > 0 && (
        <ul class="calls">
          {list.data.items.map((i) => (
            <li>
              <details>
                <summary>
                  <span class={"badge " + (i.status < 400 ? "ok" : "bad")}>{i.status}</span> {timeAgo(i.startedAt)} · {ms(i.durationMs)} ·{" "}
                  {i.coldStart ? "cold" : "warm"}
                  {i.error ? ` · ${i.error}` : ""}
                </summary>
                <pre aria-label="Call logs">{i.logs || "(nothing printed)"}</pre>
                <p class="muted small">Request {i.requestId}</p>
              </details>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function Versions({ owner, endpoint, onRollback }: { owner: string; endpoint: string; onRollback: () => void }) {
  const path = { owner, endpoint };
  const list = useAsync(() => call(api.GET("/api/v1/functions/{owner}/{endpoint}/versions", { params: { path } })), [owner, endpoint]);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState<number | null>(null);
  const rollback = async (version: number) => {
    setBusy(version);
    setError(null);
    try {
      await call(api.POST("/api/v1/functions/{owner}/{endpoint}/rollback", { params: { path }, body: { version } }));
      list.reload();
      onRollback();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(null);
    }
  };
  return (
    <section class="panel" aria-labelledby="versions-title">
      <h2 id="versions-title">Versions</h2>
      {list.loading && !list.data && <Spinner label="Loading versions…" />}
      <ErrorMessage error={list.error ?? error} />
      {list.data && (
        <ul class="versions">
          {list.data.items.map((v) => (
            <li class="row">
              <span>
                <strong>Version {v.version}</strong> <span class="muted">{timeAgo(v.createdAt)}</span>
                {v.restoredFrom != null && <span class="muted"> (restored from {v.restoredFrom})</span>}
              </span>
              {v.current ? (
                <span class="badge ok">Current</span>
              ) : (
                <button type="button" class="secondary small" disabled={busy !== null} onClick={() => rollback(v.version)}>
                  {busy === v.version ? "Rolling back…" : `Roll back to version ${v.version}`}
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function Keys({ owner, endpoint }: { owner: string; endpoint: string }) {
  const list = useAsync(() => call(api.GET("/api/v1/keys")), []);
  const [name, setName] = useState("");
  const [secret, setSecret] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const scope = `${owner}/${endpoint}`;
  const keys = (list.data?.items ?? []).filter((k) => !k.revokedAt && k.functions.some((f) => f === scope || f === `${owner}/*`));
  const create = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      const k = await call(api.POST("/api/v1/keys", { body: { name: name.trim(), functions: [scope] } }));
      setSecret(k.secret ?? null);
      setName("");
      list.reload();
    } catch (err) {
      setError(err);
    }
  };
  const revoke = async (id: string) => {
    setError(null);
    try {
      await call(api.DELETE("/api/v1/keys/{id}", { params: { path: { id } } }));
      list.reload();
    } catch (err) {
      setError(err);
    }
  };
  return (
    <section class="panel" aria-labelledby="keys-title">
      <h2 id="keys-title">API keys</h2>
      <p class="muted">Apps send a key in the X-Api-Key header. A key is shown once, when it is made.</p>
      {secret && (
        <div class="notice" role="status">
          New key: <code>{secret}</code> <CopyButton text={secret} label="Copy the new key" />
        </div>
      )}
      <form onSubmit={create} class="row">
        <label for="key-name">Key name</label>
        <input id="key-name" placeholder="my-app" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        <button type="submit" class="secondary">
          Create key
        </button>
      </form>
      <ErrorMessage error={list.error ?? error} />
      {list.loading && !list.data && <Spinner label="Loading keys…" />}
      {list.data && keys.length === 0 && <p class="muted">No keys for this function.</p>}
      <ul class="keys">
        {keys.map((k) => (
          <li class="row">
            <span>
              <strong>{k.name}</strong> <code>{k.prefix}…</code>{" "}
              <span class="muted">
                {k.usage ? `${k.usage.calls} calls, ${k.usage.errors} errors, last used ${timeAgo(k.usage.lastUsedAt)}` : ""}
              </span>
            </span>
            <button type="button" class="secondary small" onClick={() => revoke(k.id)} aria-label={`Revoke key ${k.name}`}>
              Revoke
            </button>
          </li>
        ))}
      </ul>
    </section>
  );
}
