#!/usr/bin/env python3
"""Helm for machines without a helm binary: the chart's lint, render, install, upgrade, test and
uninstall through helm-python-sdk (Helm v4's Go SDK as a library; pinned in
e2e/helm/requirements.txt, `make venv-helm`). The flags follow helm's own, so a command here reads
like the helm command a cluster admin would type:

  scripts/helm.py lint helm/skython -f values.yaml
  scripts/helm.py template sky helm/skython -n skython -f values.yaml
  scripts/helm.py install sky helm/skython -n skython --set mongodb.existingSecret=mongo --wait
  scripts/helm.py upgrade sky helm/skython -n skython --reuse-values --set image.tag=1.2 --wait
  scripts/helm.py status sky -n skython
  scripts/helm.py test sky -n skython --logs
  scripts/helm.py uninstall sky -n skython --wait

Exit status 0 on success, 1 when Helm refuses (the reason on stderr), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import helm_python as helm


def merge(into: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of -f files and --set: later values win, maps merge key by key."""
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v
    return into


def values_of(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in args.values or []:
        merge(values, helm.values_from_yaml(Path(f).read_text()))
    for s in args.set or []:
        merge(values, helm.parse_set_string(s))
    for s in args.set_json or []:
        merge(values, helm.parse_set_json(s))
    return values


def config(args: argparse.Namespace) -> helm.Config:
    return helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace)


class Progress:
    """One line saying what is being waited for, and for how long, on stderr."""

    def __init__(self, what: str) -> None:
        self.what, self.start = what, time.monotonic()
        print(f"==> {what} …", file=sys.stderr, flush=True)

    def done(self, outcome: str = "done") -> None:
        took = time.monotonic() - self.start
        print(f"==> {self.what}: {outcome} ({took:.1f} s)", file=sys.stderr, flush=True)


def lint(args: argparse.Namespace) -> int:
    report = helm.lint(args.chart, values_of(args), strict=args.strict, namespace=args.namespace)
    severities = {1: "INFO", 2: "WARNING", 3: "ERROR"}
    for m in report.get("messages") or []:
        print(f"[{severities.get(m['severity'], '?')}] {m['path']}: {m['error']}")
    errors = [m for m in report.get("messages") or [] if m["severity"] >= (2 if args.strict else 3)]
    # The report's own errors repeat its messages; alone only when a chart failed to load.
    errors = errors or report.get("errors") or []
    print(f"{report.get('total_charts_linted', 0)} chart(s) linted, {len(errors)} failed")
    return 1 if errors else 0


def template(args: argparse.Namespace) -> int:
    chart = helm.Chart.load(args.chart)
    values = values_of(args)
    # render() does not apply the schema; an install would, so this does too.
    chart.validate_schema(chart.merge_values(values))
    manifests = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    for path in sorted(manifests):
        body = manifests[path].strip()
        if body and not path.endswith("NOTES.txt"):
            print(f"---\n# Source: {path}\n{body}")
    return 0


def install_or_upgrade(args: argparse.Namespace) -> int:
    cfg = config(args)
    chart = helm.Chart.load(args.chart)
    verb = "installing" if args.command == "install" else "upgrading"
    wait = "watcher" if args.wait else None
    p = Progress(f"{verb} {args.name} in namespace {args.namespace}" + (" and waiting for it to be ready" if wait else ""))
    common = dict(namespace=args.namespace, timeout=args.timeout, wait=wait)
    if args.command == "install":
        release = cfg.install(chart, args.name, values_of(args), create_namespace=args.create_namespace, **common)
    else:
        release = cfg.upgrade(chart, args.name, values_of(args), reuse_values=args.reuse_values, **common)
    p.done(f"revision {release.get('revision')}, {release.get('status')}")
    if release.get("notes"):
        print(release["notes"])
    return 0


def uninstall(args: argparse.Namespace) -> int:
    p = Progress(f"uninstalling {args.name} from namespace {args.namespace}")
    out = config(args).uninstall(args.name, timeout=args.timeout, wait="watcher" if args.wait else None)
    p.done()
    if out.get("info"):
        print(out["info"])
    return 0


def status(args: argparse.Namespace) -> int:
    release = config(args).status(args.name)
    print(f"NAME: {release['name']}\nNAMESPACE: {release['namespace']}\nSTATUS: {release['status']}\nREVISION: {release['revision']}")
    if release.get("notes"):
        print(f"NOTES:\n{release['notes']}")
    return 0


def test(args: argparse.Namespace) -> int:
    p = Progress(f"running the tests of {args.name}")
    out = config(args).test(args.name, timeout=args.timeout, logs=args.logs)
    p.done("passed")
    if out.get("logs"):
        print(out["logs"])
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)

    def cluster(p: argparse.ArgumentParser) -> None:
        p.add_argument("-n", "--namespace", default="default")
        p.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, in-cluster")
        p.add_argument("--timeout", type=int, default=300, help="seconds (default 300)")

    def values(p: argparse.ArgumentParser) -> None:
        p.add_argument("-f", "--values", action="append", help="a values file (repeatable)")
        p.add_argument("--set", action="append", help="key=value[,key=value] (repeatable)")
        p.add_argument("--set-json", action="append", help="key=<JSON> (repeatable)")

    p = sub.add_parser("lint", help="check the chart")
    p.add_argument("chart")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p.add_argument("-n", "--namespace", default="default")
    values(p)
    p.set_defaults(run=lint)

    p = sub.add_parser("template", help="render the manifests (checked against the schema)")
    p.add_argument("name")
    p.add_argument("chart")
    p.add_argument("-n", "--namespace", default="default")
    values(p)
    p.set_defaults(run=template)

    for name in ("install", "upgrade"):
        p = sub.add_parser(name, help=f"{name} a release")
        p.add_argument("name")
        p.add_argument("chart")
        cluster(p)
        values(p)
        p.add_argument("--wait", action="store_true", help="until every resource is ready")
        if name == "install":
            p.add_argument("--create-namespace", action="store_true")
        else:
            p.add_argument("--reuse-values", action="store_true", help="start from the release's values")
        p.set_defaults(run=install_or_upgrade)

    p = sub.add_parser("uninstall", help="remove a release")
    p.add_argument("name")
    cluster(p)
    p.add_argument("--wait", action="store_true", help="until every resource is gone")
    p.set_defaults(run=uninstall)

    p = sub.add_parser("status", help="a release's state and notes")
    p.add_argument("name")
    cluster(p)
    p.set_defaults(run=status)

    p = sub.add_parser("test", help="run a release's test hooks")
    p.add_argument("name")
    cluster(p)
    p.add_argument("--logs", action="store_true", help="print the test pods' logs")
    p.set_defaults(run=test)
    return top


def main() -> int:
    args = parser().parse_args()
    try:
        return args.run(args)
    except helm.HelmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
