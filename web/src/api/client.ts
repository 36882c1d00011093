// The one way the app talks to Skython: a client typed from docs/openapi.json (generated into
// schema.gen.ts by build.mjs), so a changed API fails the type check instead of a page.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.gen";

export type Schemas = components["schemas"];
export type FunctionView = Schemas["FunctionView"];
export type FunctionSummary = Schemas["FunctionSummary"];
export type Signature = Schemas["Signature"];
export type Param = Schemas["Param"];
export type Card = Schemas["Card"];
export type InvocationView = Schemas["InvocationView"];
export type VersionView = Schemas["VersionView"];
export type CredentialView = Schemas["CredentialView"];
export type Snippets = Schemas["Snippets"];
export type TestRunResponse = Schemas["TestRunResponse"];
export type Visibility = Schemas["Visibility"];
export type Access = Schemas["Access"];
export type ErrorBody = Schemas["Error"]["error"];

export const api = createClient<paths>({ baseUrl: "" });

/** A failed API call, with what the person should read. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly body?: ErrorBody,
  ) {
    super(message);
  }
}

/** What a request that never got an answer (no network, server down) fails with. */
const unreachable = () => new ApiError(0, "unreachable", "Skython cannot be reached. Check your connection and try again.");

/** The answer of an API call, or an `ApiError` that says what went wrong. */
export async function call<T>(
  request: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  let result;
  try {
    result = await request;
  } catch {
    throw unreachable();
  }
  const { data, error, response } = result;
  if (response.ok) return data as T;
  throw errorOf(response, error);
}

function errorOf(response: Response, body: unknown): ApiError {
  const e = (body as { error?: ErrorBody } | undefined)?.error;
  if (e && typeof e.message === "string") return new ApiError(response.status, e.code, e.message, e);
  const what = response.status >= 500 ? "The server failed" : "The request was refused";
  return new ApiError(response.status, "http_" + response.status, `${what} (HTTP ${response.status}). Try again in a moment.`);
}

/** Calls a deployed endpoint the way any HTTP client would. */
export async function callEndpoint(
  owner: string,
  endpoint: string,
  args: unknown,
  key?: string,
): Promise<{ status: number; body: unknown; ms: number; cold: boolean }> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (key) headers["x-api-key"] = key;
  const started = performance.now();
  let response;
  try {
    response = await fetch(`/fn/${owner}/${endpoint}`, { method: "POST", headers, body: JSON.stringify(args) });
  } catch {
    throw unreachable();
  }
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON: shown as text */
  }
  return {
    status: response.status,
    body,
    ms: performance.now() - started,
    cold: response.headers.get("x-skython-cold-start") === "true",
  };
}
