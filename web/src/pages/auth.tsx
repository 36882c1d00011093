// Sign up and log in. Errors go next to the field they are about; the rest above the button.
import { useState } from "preact/hooks";
import { ApiError, api, call } from "../api/client";
import { Link, navigate, useLocation } from "../router";
import { loggedIn } from "../session";
import { ErrorMessage, Field, useTitle } from "../ui";

const NAME_ERRORS = new Set(["invalid_name", "name_reserved", "name_taken"]);
const PASSWORD_ERRORS = new Set(["weak_password"]);

function useNext(): string {
  const next = useLocation().query.get("next") ?? "/new";
  // Only paths of this site: never an open redirect.
  return next.startsWith("/") && !next.startsWith("//") ? next : "/new";
}

function AuthForm({ mode }: { mode: "signup" | "login" }) {
  const next = useNext();
  const signup = mode === "signup";
  useTitle(signup ? "Sign up" : "Log in");
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (signup) await call(api.POST("/api/v1/accounts", { body: { name, password } }));
      const session = await call(api.POST("/api/v1/sessions", { body: { name, password } }));
      loggedIn(session.name);
      navigate(next);
    } catch (err) {
      setError(err instanceof ApiError ? err : new ApiError(0, "unknown", String(err)));
      setBusy(false);
    }
  };

  const nameError = error && NAME_ERRORS.has(error.code) ? error.message : null;
  const passwordError = error && PASSWORD_ERRORS.has(error.code) ? error.message : null;
  const formError = error && !nameError && !passwordError ? error : null;
  return (
    <section class="narrow card">
      <h1>{signup ? "Create your account" : "Log in"}</h1>
      <form onSubmit={submit} noValidate>
        <Field
          id="auth-name"
          label="Name"
          error={nameError}
          hint={signup ? "Lowercase letters, digits and '-': it becomes part of your endpoints' URLs." : undefined}
        >
          {(a) => (
            <input
              {...a}
              name="username"
              autocomplete="username"
              autocapitalize="none"
              spellcheck={false}
              required
              value={name}
              onInput={(e) => setName(e.currentTarget.value)}
            />
          )}
        </Field>
        <Field id="auth-password" label="Password" error={passwordError} hint={signup ? "At least 8 characters." : undefined}>
          {(a) => (
            <input
              {...a}
              type="password"
              name="password"
              autocomplete={signup ? "new-password" : "current-password"}
              required
              value={password}
              onInput={(e) => setPassword(e.currentTarget.value)}
            />
          )}
        </Field>
        <ErrorMessage error={formError} />
        <button type="submit" disabled={busy}>
          {busy ? (signup ? "Creating your account…" : "Logging in…") : signup ? "Sign up" : "Log in"}
        </button>
      </form>
      <p class="muted">
        {signup ? (
          <>
            Have an account? <Link href={`/login?next=${encodeURIComponent(next)}`}>Log in</Link>
          </>
        ) : (
          <>
            New here? <Link href={`/signup?next=${encodeURIComponent(next)}`}>Create an account</Link>
          </>
        )}
      </p>
    </section>
  );
}

export const SignUp = () => <AuthForm mode="signup" />;
export const LogIn = () => <AuthForm mode="login" />;
