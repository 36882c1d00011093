// The skybox: search the community's public functions by words and tags. The same search is a
// full page and the panel beside the editor.
import { useEffect, useState } from "preact/hooks";
import { type Card, type Signature, api, call } from "../api/client";
import { Link, useLocation } from "../router";
import { ErrorMessage, Spinner, useAsync, useTitle } from "../ui";

const PAGE = 20;

export function signatureText(s?: Signature | null): string {
  if (!s) return "";
  const params = (s.params ?? []).map((p) => {
    const star = p.kind === "var_positional" ? "*" : p.kind === "var_keyword" ? "**" : "";
    const hint = p.annotation ? `: ${p.annotation}` : "";
    const dflt = p.default != null ? ` = ${p.default}` : "";
    return star + p.name + hint + dflt;
  });
  return `${s.entrypoint}(${params.join(", ")})${s.returns ? ` -> ${s.returns}` : ""}`;
}

export function SkyboxSearch({ compact = false, headingLevel = 2 }: { compact?: boolean; headingLevel?: 2 | 3 }) {
  const loc = useLocation();
  // The full page keeps its query in the URL (shareable, back button); the panel in itself.
  const [q, setQ] = useState(compact ? "" : (loc.query.get("q") ?? ""));
  const [tags, setTags] = useState<string[]>(compact ? [] : loc.query.getAll("tag"));
  const [typed, setTyped] = useState(q);
  const [limit, setLimit] = useState(PAGE);

  useEffect(() => {
    const t = setTimeout(() => setQ(typed.trim()), 250);
    return () => clearTimeout(t);
  }, [typed]);
  useEffect(() => {
    setLimit(PAGE);
    if (compact) return;
    const params = new URLSearchParams();
    if (q) params.set("q", q);
    tags.forEach((t) => params.append("tag", t));
    const s = params.toString();
    history.replaceState(null, "", "/skybox" + (s ? "?" + s : ""));
  }, [q, tags.join(",")]);

  const results = useAsync(
    () => call(api.GET("/api/v1/skybox", { params: { query: { q: q || undefined, tag: tags.length ? tags : undefined, limit } } })),
    [q, tags.join(","), limit],
  );
  const toggle = (t: string) => setTags((ts) => (ts.includes(t) ? ts.filter((x) => x !== t) : [...ts, t]));
  const shownTags = [...new Set([...tags, ...(results.data?.items ?? []).flatMap((c) => c.tags)])].slice(0, 12);
  const idp = compact ? "panel" : "page";
  const H = headingLevel === 2 ? "h2" : "h3";

  return (
    <div class={"skybox" + (compact ? " compact" : "")}>
      <form role="search" onSubmit={(e) => (e.preventDefault(), setQ(typed.trim()))}>
        <label for={`${idp}-q`}>Search functions</label>
        <input
          id={`${idp}-q`}
          type="search"
          placeholder="e.g. celsius, sentiment, invoice"
          value={typed}
          onInput={(e) => setTyped(e.currentTarget.value)}
        />
      </form>
      {shownTags.length > 0 && (
        <div class="tags" role="group" aria-label="Filter by tag">
          {shownTags.map((t) => (
            <button type="button" class="chip" aria-pressed={tags.includes(t)} onClick={() => toggle(t)}>
              #{t}
            </button>
          ))}
        </div>
      )}
      {results.error ? <ErrorMessage error={results.error} title="The search failed" /> : null}
      {results.loading && !results.data ? <Spinner label="Searching the skybox…" /> : null}
      {results.data && (
        <>
          <p class="muted" role="status" aria-live="polite">
            {results.data.total === 0
              ? q || tags.length
                ? "No public function matches. Try other words."
                : "No public functions yet: deploy one as public to be the first."
              : `${results.data.total} function${results.data.total === 1 ? "" : "s"}`}
          </p>
          <ul class="cards" aria-label="Search results">
            {results.data.items.map((c) => (
              <CardItem card={c} H={H} onTag={toggle} />
            ))}
          </ul>
          {results.data.total > results.data.items.length && (
            <button type="button" class="secondary" onClick={() => setLimit((l) => Math.min(l + PAGE, 100))} disabled={limit >= 100}>
              {results.loading ? "Loading…" : "Show more"}
            </button>
          )}
        </>
      )}
    </div>
  );
}

function CardItem({ card, H, onTag }: { card: Card; H: "h2" | "h3"; onTag: (t: string) => void }) {
  const href = `/f/${card.owner}/${card.endpoint}`;
  return (
    <li class="card fn-card">
      <H class="card-title">
        <Link href={href}>
          {card.owner}/{card.endpoint}
        </Link>
      </H>
      {card.description && <p>{card.description}</p>}
      {card.signature && <code class="sig">{signatureText(card.signature)}</code>}
      <p class="meta">
        <span>
          {card.calls} call{card.calls === 1 ? "" : "s"}
        </span>
        {card.tags.map((t) => (
          <button type="button" class="tag" aria-label={`Filter by tag ${t}`} onClick={() => onTag(t)}>
            #{t}
          </button>
        ))}
      </p>
    </li>
  );
}

export function SkyboxPage() {
  useTitle("Skybox");
  return (
    <section>
      <h1>Skybox</h1>
      <p class="lead">Functions people shared: read their code, call them, clone them into your account.</p>
      <SkyboxSearch />
    </section>
  );
}

