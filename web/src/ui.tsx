// Small pieces every page uses: loading and error states, labelled fields, copy buttons, tabs.
import type { ComponentChildren, JSX } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "./api/client";

export function Spinner({ label }: { label: string }) {
  return (
    <p class="spinner" role="status" aria-live="polite">
      <span class="spin" aria-hidden="true" />
      {label}
    </p>
  );
}

export function messageOf(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

export function ErrorMessage({ error, title }: { error: unknown; title?: string }) {
  if (!error) return null;
  const code = error instanceof ApiError && error.status ? ` (${error.code})` : "";
  return (
    <div class="error" role="alert">
      {title && <strong>{title}: </strong>}
      {messageOf(error)}
      {code && <span class="muted">{code}</span>}
    </div>
  );
}

export interface Async<T> {
  data?: T;
  error?: unknown;
  loading: boolean;
  reload: () => void;
}

/** Runs `load` when `deps` change; the latest answer wins. */
export function useAsync<T>(load: () => Promise<T>, deps: unknown[]): Async<T> {
  const [state, setState] = useState<{ data?: T; error?: unknown; loading: boolean }>({ loading: true });
  const generation = useRef(0);
  const run = useCallback(() => {
    const mine = ++generation.current;
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (data) => mine === generation.current && setState({ data, loading: false }),
      (error) => mine === generation.current && setState({ error, loading: false }),
    );
  }, deps);
  useEffect(run, [run]);
  return { ...state, reload: run };
}

/** A labelled input with its error below it, tied together for screen readers. */
export function Field({
  id,
  label,
  error,
  hint,
  children,
}: {
  id: string;
  label: string;
  error?: string | null;
  hint?: string;
  children: (a11y: { id: string; "aria-invalid"?: boolean; "aria-describedby"?: string }) => JSX.Element;
}) {
  const described = [error ? `${id}-error` : "", hint ? `${id}-hint` : ""].filter(Boolean).join(" ");
  return (
    <div class={"field" + (error ? " invalid" : "")}>
      <label for={id}>{label}</label>
      {children({ id, "aria-invalid": error ? true : undefined, "aria-describedby": described || undefined })}
      {hint && (
        <p class="hint" id={`${id}-hint`}>
          {hint}
        </p>
      )}
      {error && (
        <p class="field-error" id={`${id}-error`}>
          {error}
        </p>
      )}
    </div>
  );
}

export function CopyButton({ text, label }: { text: string; label: string }) {
  const [done, setDone] = useState<"" | "copied" | "failed">("");
  return (
    <button
      type="button"
      class="secondary small"
      aria-label={label}
      onClick={async () => {
        try {
          await navigator.clipboard.writeText(text);
          setDone("copied");
        } catch {
          setDone("failed");
        }
        setTimeout(() => setDone(""), 2000);
      }}
    >
      {done === "copied" ? "Copied" : done === "failed" ? "Select and copy by hand" : "Copy"}
    </button>
  );
}

/** Tabs with the ARIA tab pattern (arrow keys move between tabs). */
export function Tabs({
  label,
  tabs,
  selected,
  onSelect,
  idPrefix,
  panelOf = () => `${idPrefix}-panel`,
}: {
  label: string;
  /** The id of the panel a tab shows (one panel for all by default). */
  panelOf?: (tab: string) => string;
  tabs: { id: string; title: string }[];
  selected: string;
  onSelect: (id: string) => void;
  idPrefix: string;
}) {
  return (
    <div role="tablist" aria-label={label} class="tabs">
      {tabs.map((t, i) => (
        <button
          type="button"
          role="tab"
          id={`${idPrefix}-tab-${t.id}`}
          aria-selected={t.id === selected}
          aria-controls={panelOf(t.id)}
          tabIndex={t.id === selected ? 0 : -1}
          onClick={() => onSelect(t.id)}
          onKeyDown={(e) => {
            const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
            if (!step) return;
            const next = tabs[(i + step + tabs.length) % tabs.length];
            onSelect(next.id);
            document.getElementById(`${idPrefix}-tab-${next.id}`)?.focus();
          }}
        >
          {t.title}
        </button>
      ))}
    </div>
  );
}

export function TabPanel({ idPrefix, selected, children }: { idPrefix: string; selected: string; children: ComponentChildren }) {
  return (
    <div role="tabpanel" id={`${idPrefix}-panel`} aria-labelledby={`${idPrefix}-tab-${selected}`} class="tabpanel">
      {children}
    </div>
  );
}

export function timeAgo(iso?: string | null): string {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

export function ms(n: number): string {
  return n < 10 ? `${n.toFixed(1)} ms` : n < 1000 ? `${Math.round(n)} ms` : `${(n / 1000).toFixed(2)} s`;
}

export function useTitle(title: string) {
  useEffect(() => {
    document.title = title ? `${title} · Skython` : "Skython";
  }, [title]);
}
