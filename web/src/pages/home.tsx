import { Link } from "../router";
import { useTitle } from "../ui";
import { SkyboxSearch } from "./skybox";

export function Home({ user }: { user: string | null }) {
  useTitle("");
  return (
    <>
      <section class="hero">
        <h1>Any Python function, an HTTP endpoint in seconds</h1>
        <p class="lead">
          Write a plain function, try it with arguments, deploy it under a name. Anything that speaks HTTP calls it
          with JSON and gets JSON back. numpy, pandas, scipy and requests are ready to import.
        </p>
        <p class="actions">
          <Link class="button" href={user ? "/new" : "/signup?next=/new"}>
            {user ? "Write a function" : "Start writing — it's free"}
          </Link>
          <Link class="button secondary" href="/skybox">
            Browse the skybox
          </Link>
        </p>
      </section>
      <section aria-labelledby="home-skybox">
        <h2 id="home-skybox">From the skybox</h2>
        <SkyboxSearch compact headingLevel={3} />
      </section>
    </>
  );
}
