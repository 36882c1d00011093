// My functions: each with its status, last call, calls and errors.
import { api, call } from "../api/client";
import { Link } from "../router";
import { ErrorMessage, Spinner, timeAgo, useAsync, useTitle } from "../ui";

export function MyFunctions({ user }: { user: string }) {
  useTitle("My functions");
  const list = useAsync(() => call(api.GET("/api/v1/functions", { params: { query: { owner: user } } })), [user]);
  return (
    <section>
      <div class="row">
        <h1>My functions</h1>
        <Link class="button" href="/new">
          New function
        </Link>
      </div>
      {list.loading && !list.data && <Spinner label="Loading your functions…" />}
      <ErrorMessage error={list.error} title="Could not list your functions" />
      {list.data && list.data.items.length === 0 && (
        <p class="empty">
          No functions yet. <Link href="/new">Write your first one</Link> or clone one from the{" "}
          <Link href="/skybox">skybox</Link>.
        </p>
      )}
      {list.data && list.data.items.length > 0 && (
        <div class="table-wrap">
          <table class="stack">
            <caption class="visually-hidden">Your functions</caption>
            <thead>
              <tr>
                <th scope="col">Function</th>
                <th scope="col">Status</th>
                <th scope="col">Visibility</th>
                <th scope="col">Last call</th>
                <th scope="col" class="num">
                  Calls
                </th>
                <th scope="col" class="num">
                  Errors
                </th>
              </tr>
            </thead>
            <tbody>
              {list.data.items.map((f) => (
                <tr>
                  <th scope="row">
                    <Link href={`/f/${f.owner}/${f.endpoint}`}>{f.endpoint}</Link>
                    {f.description && <div class="muted small">{f.description}</div>}
                  </th>
                  <td data-label="Status">
                    <span class={"badge " + (f.ready ? "ok" : "warn")}>{f.ready ? "Ready" : "Starting"}</span>
                  </td>
                  <td data-label="Visibility">{f.visibility === "public" ? "Public" : "Private"}</td>
                  <td data-label="Last call" class="nowrap">{timeAgo(f.stats.lastCalledAt)}</td>
                  <td data-label="Calls" class="num">{f.stats.calls}</td>
                  <td data-label="Errors" class="num">{f.stats.errors}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
