// The argument form generated from a function's signature: an input per parameter, typed from
// its hint, prefilled from its default; empty optional fields are left out so defaults apply.
import { useState } from "preact/hooks";
import type { Param, Signature } from "./api/client";

type Kind = "int" | "float" | "bool" | "str" | "json";

function kindOf(annotation?: string | null): Kind {
  const a = (annotation ?? "").replace(/\s/g, "").replace(/^Optional\[(.*)\]$/, "$1").replace(/\|None$/, "");
  if (a === "int") return "int";
  if (a === "float") return "float";
  if (a === "bool") return "bool";
  if (a === "str") return "str";
  return "json";
}

/** A Python literal's text as the form's initial text (best effort; anything else starts empty). */
function initial(kind: Kind, dflt?: string | null): string {
  if (dflt == null || dflt === "None") return "";
  if (kind === "str") {
    const m = /^[rRuU]?(['"])(.*)\1$/s.exec(dflt);
    return m ? m[2] : "";
  }
  if (kind === "bool") return dflt === "True" ? "true" : "false";
  if (kind === "json") {
    const json = dflt.replace(/\bTrue\b/g, "true").replace(/\bFalse\b/g, "false").replace(/\bNone\b/g, "null").replace(/'/g, '"');
    try {
      JSON.parse(json);
      return json;
    } catch {
      return "";
    }
  }
  return dflt;
}

export const formParams = (s?: Signature | null): Param[] =>
  (s?.params ?? []).filter((p) => p.kind !== "var_positional" && p.kind !== "var_keyword");

export type ArgValues = Record<string, string>;

export function initialValues(s?: Signature | null): ArgValues {
  return Object.fromEntries(formParams(s).map((p) => [p.name, initial(kindOf(p.annotation), p.default)]));
}

/** The arguments object, or the fields' errors. */
export function collect(s: Signature | null | undefined, values: ArgValues): { args?: Record<string, unknown>; errors: Record<string, string> } {
  const args: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const p of formParams(s)) {
    const kind = kindOf(p.annotation);
    const text = values[p.name] ?? "";
    const required = p.default == null;
    if (kind === "bool") {
      args[p.name] = text === "true";
      continue;
    }
    if (text === "" && kind !== "str") {
      if (required) errors[p.name] = `Enter a value for ${p.name}.`;
      continue;
    }
    if (kind === "str") {
      if (text === "" && !required) continue;
      args[p.name] = text;
    } else if (kind === "int") {
      if (!/^-?\d+$/.test(text.trim())) errors[p.name] = `${p.name} must be a whole number.`;
      else args[p.name] = Number(text);
    } else if (kind === "float") {
      const n = Number(text);
      if (text.trim() === "" || Number.isNaN(n)) errors[p.name] = `${p.name} must be a number.`;
      else args[p.name] = n;
    } else {
      try {
        args[p.name] = JSON.parse(text);
      } catch {
        errors[p.name] = `${p.name} must be JSON (a number, "text", [a, list] or {"an": "object"}).`;
      }
    }
  }
  return Object.keys(errors).length ? { errors } : { args, errors };
}

export function ArgsForm({
  signature,
  values,
  errors,
  onChange,
  idPrefix,
}: {
  signature?: Signature | null;
  values: ArgValues;
  errors: Record<string, string>;
  onChange: (v: ArgValues) => void;
  idPrefix: string;
}) {
  const params = formParams(signature);
  if (!params.length) return <p class="muted">{signature ? `${signature.entrypoint}() takes no arguments.` : "Arguments appear here once the code parses."}</p>;
  return (
    <div class="args">
      {params.map((p) => {
        const kind = kindOf(p.annotation);
        const id = `${idPrefix}-${p.name}`;
        const err = errors[p.name];
        const label = `${p.name}${p.annotation ? ` (${p.annotation})` : ""}${p.default == null ? "" : " — optional"}`;
        const set = (v: string) => onChange({ ...values, [p.name]: v });
        const a11y = { id, "aria-invalid": err ? true : undefined, "aria-describedby": err ? `${id}-error` : undefined };
        return (
          <div class={"field" + (err ? " invalid" : "")}>
            {kind === "bool" ? (
              <label class="check">
                <input type="checkbox" {...a11y} checked={values[p.name] === "true"} onChange={(e) => set(String(e.currentTarget.checked))} />
                {label}
              </label>
            ) : (
              <>
                <label for={id}>{label}</label>
                {kind === "json" ? (
                  <textarea {...a11y} rows={2} spellcheck={false} placeholder={p.default ?? "JSON"} value={values[p.name] ?? ""} onInput={(e) => set(e.currentTarget.value)} />
                ) : kind === "str" ? (
                  <input {...a11y} type="text" required={p.default == null} value={values[p.name] ?? ""} onInput={(e) => set(e.currentTarget.value)} />
                ) : (
                  <input
                    {...a11y}
                    type="number"
                    step={kind === "int" ? "1" : "any"}
                    required={p.default == null}
                    value={values[p.name] ?? ""}
                    onInput={(e) => set(e.currentTarget.value)}
                  />
                )}
              </>
            )}
            {err && (
              <p class="field-error" id={`${id}-error`}>
                {err}
              </p>
            )}
          </div>
        );
      })}
    </div>
  );
}

/** The form's state: what the person typed over the current signature's defaults (a parameter
 * that stays keeps its value when the signature changes), the fields' errors, and `submit`,
 * which checks the fields, then sends the arguments with a busy flag and the failure kept. */
export function useArgsForm(signature?: Signature | null) {
  const [edited, setEdited] = useState<ArgValues>({});
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const values = initialValues(signature);
  for (const k of Object.keys(values)) if (k in edited) values[k] = edited[k];
  const submit = (send: (args: Record<string, unknown>) => Promise<void>) => async (e: Event) => {
    e.preventDefault();
    const checked = collect(signature, values);
    setErrors(checked.errors);
    if (!checked.args) return;
    setBusy(true);
    setError(null);
    try {
      await send(checked.args);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return { values, errors, busy, error, setError, submit, setValues: (v: ArgValues) => setEdited((old) => ({ ...old, ...v })) };
}
