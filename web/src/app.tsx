// The shell: header and navigation, the page for the current path, and a last-resort message
// when something fails that no page caught (never a blank page).
import { Component, type ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { EditorPage } from "./pages/editor";
import { FunctionPage } from "./pages/function";
import { Home } from "./pages/home";
import { LogIn, SignUp } from "./pages/auth";
import { MyFunctions } from "./pages/functions";
import { SkyboxPage } from "./pages/skybox";
import { Link, match, navigate, useLocation } from "./router";
import { logOut, restore, useSession } from "./session";
import { ErrorMessage, messageOf } from "./ui";

export function App() {
  const { path } = useLocation();
  const { user, checked } = useSession();
  useEffect(() => {
    restore();
  }, []);
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <Header user={user} path={path} />
      <Boundary key={path}>
        <main id="main" tabIndex={-1}>
          {checked ? <Page path={path} user={user} /> : null}
        </main>
      </Boundary>
      <UnhandledErrors />
    </>
  );
}

function Page({ path, user }: { path: string; user: string | null }) {
  let m;
  if (path === "/") return <Home user={user} />;
  if (path === "/signup") return <SignUp />;
  if (path === "/login") return <LogIn />;
  if (path === "/skybox") return <SkyboxPage />;
  if (path === "/functions") return user ? <MyFunctions user={user} /> : <NeedLogin />;
  if (path === "/new") return user ? <EditorPage user={user} /> : <NeedLogin />;
  if ((m = match("/edit/:owner/:endpoint", path)))
    return user ? <EditorPage user={user} owner={m.owner} endpoint={m.endpoint} /> : <NeedLogin />;
  if ((m = match("/f/:owner/:endpoint", path))) return <FunctionPage user={user} owner={m.owner} endpoint={m.endpoint} />;
  return (
    <section class="narrow">
      <h1>Page not found</h1>
      <p>
        There is nothing at <code>{path}</code>. <Link href="/">Go to the front page</Link> or{" "}
        <Link href="/skybox">search the skybox</Link>.
      </p>
    </section>
  );
}

function NeedLogin() {
  const next = encodeURIComponent(location.pathname + location.search);
  useEffect(() => navigate(`/login?next=${next}`, { replace: true }), []);
  return null;
}

function Header({ user, path }: { user: string | null; path: string }) {
  const [error, setError] = useState<unknown>();
  const current = (p: string) => (path === p ? "page" : undefined);
  return (
    <header class="top">
      <Link href="/" class="brand" aria-label="Skython, front page">
        <img src="/favicon.svg" alt="" width={28} height={28} />
        <span>Skython</span>
      </Link>
      <nav aria-label="Main">
        <Link href="/skybox" aria-current={current("/skybox")}>
          Skybox
        </Link>
        {user && (
          <>
            <Link href="/functions" aria-current={current("/functions")}>
              My functions
            </Link>
            <Link href="/new" aria-current={current("/new")}>
              New function
            </Link>
          </>
        )}
      </nav>
      <div class="account">
        {user ? (
          <>
            <span class="who">
              Logged in as <strong>{user}</strong>
            </span>
            <button
              type="button"
              class="secondary small"
              onClick={() =>
                logOut().then(
                  () => navigate("/"),
                  (e) => setError(e),
                )
              }
            >
              Log out
            </button>
          </>
        ) : (
          <>
            <Link href="/login" aria-current={current("/login")}>
              Log in
            </Link>
            <Link href="/signup" class="button small" aria-current={current("/signup")}>
              Sign up
            </Link>
          </>
        )}
      </div>
      {error ? <ErrorMessage error={error} title="Could not log out" /> : null}
    </header>
  );
}

/** A render error shows a message and a way back instead of an empty page. */
class Boundary extends Component<{ children: ComponentChildren }, { error?: unknown }> {
  state: { error?: unknown } = {};
  static getDerivedStateFromError(error: unknown) {
    return { error };
  }
  render() {
    if (this.state.error)
      return (
        <main id="main" class="narrow">
          <h1>Something went wrong</h1>
          <ErrorMessage error={this.state.error} />
          <p>
            <a href={location.pathname}>Reload this page</a> or <a href="/">go to the front page</a>.
          </p>
        </main>
      );
    return this.props.children;
  }
}

/** Errors no page handled (a failed promise, a script error) are shown, not only logged. */
function UnhandledErrors() {
  const [message, setMessage] = useState<string | null>(null);
  useEffect(() => {
    const onRejection = (e: PromiseRejectionEvent) => {
      e.preventDefault();
      setMessage(messageOf(e.reason));
    };
    const onError = (e: ErrorEvent) => setMessage(e.message);
    addEventListener("unhandledrejection", onRejection);
    addEventListener("error", onError);
    return () => {
      removeEventListener("unhandledrejection", onRejection);
      removeEventListener("error", onError);
    };
  }, []);
  if (!message) return null;
  return (
    <div class="toast error" role="alert">
      {message}
      <button type="button" class="secondary small" onClick={() => setMessage(null)}>
        Dismiss
      </button>
    </div>
  );
}
