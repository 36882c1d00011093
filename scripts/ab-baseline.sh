#!/usr/bin/env bash
# Builds the release `skython` of an earlier revision for `make bench-ab` and prints its path.
# Usage: scripts/ab-baseline.sh REV DIR
# The revision's tree is exported from the local repository into DIR/<commit> (an export, not a
# worktree: nothing is registered in the repository, and deleting DIR leaves nothing stale),
# built with the target dir DIR/target, and the binary kept as DIR/skython-<commit>: later runs
# reuse it, and one target dir serves every revision.
set -euo pipefail
rev=${1:?usage: ab-baseline.sh REV DIR} dir=${2:?usage: ab-baseline.sh REV DIR}
commit=$(git rev-parse --verify --quiet --short=12 "$rev^{commit}") ||
  { echo "ab-baseline.sh: $rev is not a commit of this repository" >&2; exit 1; }
bin=$dir/skython-$commit
if [ ! -x "$bin" ]; then
  src=$dir/$commit
  if [ ! -f "$src/Cargo.toml" ]; then
    echo "==> exporting $commit into $src" >&2
    rm -rf "$src.part" && mkdir -p "$src.part"
    git archive "$commit" | tar -x -C "$src.part"
    mv "$src.part" "$src"
  fi
  echo "==> building the release skython of $commit" >&2
  CARGO_TARGET_DIR=$dir/target cargo build --release --locked -p skython-cli \
    --manifest-path "$src/Cargo.toml" >&2
  cp "$dir/target/release/skython" "$bin.part" && mv "$bin.part" "$bin"
fi
echo "$bin"
