// The Python editor (CodeMirror 6): highlighting, the server's problems as lint marks, and a
// read-only variant for showing other people's code.
import { python } from "@codemirror/lang-python";
import { type Diagnostic, lintGutter, setDiagnostics } from "@codemirror/lint";
import { EditorState } from "@codemirror/state";
import { EditorView } from "@codemirror/view";
import { basicSetup } from "codemirror";
import { useEffect, useRef } from "preact/hooks";

export interface Problem {
  message: string;
  line?: number;
  column?: number;
}

export function PythonEditor({
  value,
  onChange,
  problems = [],
  label,
  readOnly = false,
  id,
}: {
  value: string;
  onChange?: (source: string) => void;
  problems?: Problem[];
  label: string;
  readOnly?: boolean;
  id?: string;
}) {
  const host = useRef<HTMLDivElement>(null);
  const view = useRef<EditorView | null>(null);
  const changed = useRef(onChange);
  changed.current = onChange;

  useEffect(() => {
    const v = new EditorView({
      parent: host.current!,
      state: EditorState.create({
        doc: value,
        extensions: [
          basicSetup,
          python(),
          lintGutter(),
          EditorView.contentAttributes.of({ "aria-label": label, ...(id ? { id } : {}) }),
          EditorState.readOnly.of(readOnly),
          EditorView.editable.of(!readOnly),
          EditorView.updateListener.of((u) => {
            if (u.docChanged) changed.current?.(u.state.doc.toString());
          }),
        ],
      }),
    });
    view.current = v;
    return () => v.destroy();
  }, []);

  // A new document from outside (a clone, a version) replaces the text.
  useEffect(() => {
    const v = view.current;
    if (v && v.state.doc.toString() !== value) {
      v.dispatch({ changes: { from: 0, to: v.state.doc.length, insert: value } });
    }
  }, [value]);

  useEffect(() => {
    const v = view.current;
    if (!v) return;
    v.dispatch(setDiagnostics(v.state, problems.map((p) => diagnostic(v.state, p))));
  }, [problems]);

  return <div class={"code" + (readOnly ? " readonly" : "")} ref={host} />;
}

/** A problem's line and column (1-based, as Python reports them) as a range in the document. */
function diagnostic(state: EditorState, p: Problem): Diagnostic {
  const lines = state.doc.lines;
  const line = state.doc.line(Math.min(Math.max(p.line ?? 1, 1), lines));
  const from = Math.min(line.from + Math.max((p.column ?? 1) - 1, 0), line.to);
  // Mark to the line's end so that an error at the end of a line is still visible.
  const to = from < line.to ? line.to : from;
  return { from, to, severity: "error", message: p.message, source: "Python" };
}
