#!/usr/bin/env bash
# The product issue's history rewrite: drop from every commit each version of a checkpoint.pt that the
# current tree does not hold (the in-flight snapshots and old versions that made a clone ~1 GB), keeping
# the checkpoints the tree has now. It rewrites every commit id, so it comes last, in a submission of its
# own, when no open issue adds checkpoints any more (the field issue's long runs finished).
#   bash experiments/shrink_history.sh REPO     rewrite REPO (a clean checkout) in place and print the sizes
#   bash experiments/shrink_history.sh --try    the same on a fresh clone of this checkout, in a temporary
#                                               folder: what a clone would weigh after, nothing changed here
# Needs git-filter-repo (pip install git-filter-repo).
set -euo pipefail
FILTER_REPO=${FILTER_REPO:-git-filter-repo}
command -v "$FILTER_REPO" >/dev/null || { echo "git-filter-repo not found: pip install git-filter-repo" >&2; exit 1; }
if [ "${1:-}" = "--try" ]; then
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  git clone -q --no-local "$(git rev-parse --show-toplevel)" "$TMP/repo"
  REPO=$TMP/repo
else
  REPO=${1:?usage: $0 REPO | --try}
fi
cd "$REPO"
[ -z "$(git status --porcelain)" ] || { echo "$REPO has uncommitted changes" >&2; exit 1; }
packed() { git count-objects -v | awk '/^size-pack:/ {printf "%.1f MB", $2 / 1024}'; }
git gc -q --prune=now
echo "before: $(packed) packed, $(git rev-list --count HEAD) commits"
# every blob that was ever a checkpoint.pt, less those the current tree holds
git rev-list --objects --all | awk '$2 ~ /(^|\/)checkpoint\.pt$/ {print $1}' | sort -u > .git/ckpt-all
git ls-tree -r HEAD | awk '$4 ~ /(^|\/)checkpoint\.pt$/ {print $3}' | sort -u > .git/ckpt-kept
comm -23 .git/ckpt-all .git/ckpt-kept > .git/ckpt-dropped
echo "checkpoint versions in history: $(wc -l < .git/ckpt-all), kept (in the tree now): $(wc -l < .git/ckpt-kept)"
"$FILTER_REPO" --force --quiet --strip-blobs-with-ids .git/ckpt-dropped
git reflog expire --expire=now --all
git gc -q --prune=now --aggressive
echo "after: $(packed) packed, $(git rev-list --count HEAD) commits"
