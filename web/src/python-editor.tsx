// The editor, loaded on first use: CodeMirror is most of the app's bytes, and the front page,
// the skybox and the forms do not need it. Until it arrives the code shows as plain text.
import { useEffect, useState } from "preact/hooks";
import type { PythonEditor as Editor } from "./code";
import { ErrorMessage } from "./ui";

type Props = Parameters<typeof Editor>[0];
let loaded: typeof Editor | null = null;

export function PythonEditor(props: Props) {
  const [Real, setReal] = useState<typeof Editor | null>(() => loaded);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    if (Real) return;
    import("./code").then(
      (m) => {
        loaded = m.PythonEditor;
        setReal(() => m.PythonEditor);
      },
      () => setError(new Error("The editor could not be loaded. Check your connection and reload the page.")),
    );
  }, []);
  if (Real) return <Real {...props} />;
  return (
    <>
      <ErrorMessage error={error} />
      <pre class="code-loading" aria-busy="true">
        {props.value}
      </pre>
    </>
  );
}
