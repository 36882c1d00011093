// The Python editor (CodeMirror 6): highlighting, the server's problems as lint marks, and a
// read-only variant for showing other people's code.
import { python } from "@codemirror/lang-python";
import { HighlightStyle, indentUnit, syntaxHighlighting } from "@codemirror/language";
import { type Diagnostic, lintGutter, setDiagnostics } from "@codemirror/lint";
import { EditorState } from "@codemirror/state";
import { EditorView, tooltips } from "@codemirror/view";
import { tags as t } from "@lezer/highlight";
import { basicSetup } from "codemirror";
import { useEffect, useRef } from "preact/hooks";

export interface Problem {
  message: string;
  line?: number | null;
  column?: number | null;
}

const NONE: Problem[] = [];

/** Colours with at least 4.5:1 contrast on white (the default style's orange and grey fail). */
const highlight = HighlightStyle.define([
  { tag: [t.keyword, t.controlKeyword, t.definitionKeyword, t.moduleKeyword, t.operatorKeyword], color: "#7b1fa2" },
  { tag: [t.string, t.special(t.string), t.character], color: "#a31515" },
  { tag: [t.number, t.bool, t.null], color: "#0b6a3b" },
  { tag: [t.comment, t.lineComment, t.blockComment], color: "#57606a", fontStyle: "italic" },
  { tag: [t.function(t.definition(t.variableName)), t.function(t.variableName)], color: "#1d4ed8" },
  { tag: [t.definition(t.className), t.className], color: "#8a4b00" },
  { tag: [t.self, t.special(t.variableName)], color: "#9a3412" },
  { tag: t.invalid, color: "#b00020" },
]);

/** `value` is the initial text of an editable editor (which then owns it), and the text of a
 * read-only one. */
export function PythonEditor({
  value,
  onChange,
  problems = NONE,
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
          syntaxHighlighting(highlight),
          indentUnit.of("    "), // PEP 8
          lintGutter(),
          // Tooltips (completions, lint messages) live on the body, not clipped by the box.
          tooltips({ parent: document.body }),
          // Focusable even when read-only, so that a keyboard can scroll long code.
          EditorView.contentAttributes.of({ "aria-label": label, tabindex: "0", ...(id ? { id } : {}) }),
          ...(readOnly || matchMedia("(max-width: 800px)").matches ? [EditorView.lineWrapping] : []),
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

  // A read-only view follows its value (a rollback, another version). An editable one owns
  // its document: feeding the person's own typing back in races with the next keystroke.
  useEffect(() => {
    const v = view.current;
    if (v && readOnly && v.state.doc.toString() !== value) {
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
  let from = Math.min(line.from + Math.max((p.column ?? 1) - 1, 0), line.to);
  // To the line's end; an error at the very end (an unfinished expression) marks the line's text.
  if (from >= line.to) from = line.from + (/^\s*/.exec(line.text)?.[0].length ?? 0);
  return { from: Math.min(from, line.to), to: line.to, severity: "error", message: p.message, source: "Python" };
}
