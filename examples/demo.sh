#!/usr/bin/env bash
# The haios demo: scaffold a desired-state repo for a local 3-node cluster, validate it, and show
# what validation says about a broken policy. Run it with `make demo`.
set -euo pipefail

work=$(mktemp -d "${TMPDIR:-/tmp}/haios-demo.XXXXXX")
repo="$work/demo-repo"
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

step "haios init: a desired-state repo with 3 local nodes"
haios init "$repo" --nodes 3
git -C "$repo" log --oneline
echo "files:"; (cd "$repo" && git ls-files | grep -v '^.haios/' | sed 's/^/  /')
echo "node roots (ignored by git):"; (cd "$repo" && ls -d nodes/* | sed 's/^/  /')

step "haios validate: the fresh repo is valid"
haios --repo "$repo" validate

step "a node's state.txt is an integrity-protected control file"
cat "$repo/nodes/node-1/state.txt"

step "break the policy: k = 5 (allowed 1.2 to 2.0) and a misspelt key"
cp -r "$repo" "$work/broken"
sed -i 's/^phi:$/phi:\n  k: 5/; s/^  window: 100/  windw: 100/' "$work/broken/policies/thresholds.yaml"
set +e
haios --repo "$work/broken" validate
code=$?
set -e
echo "exit code: $code (1 = invalid)"

step "the same as JSON, for scripts"
haios --repo "$work/broken" --output json validate | head -20 || true

step "haios sim: a simulated 5-node cluster, 3 clean iterations (15 transitions, real processes)"
haios sim init "$work/sim" --nodes 5
haios sim run "$work/sim" --iterations 3 --seed 1 --faults none
haios sim check "$work/sim"
grep -E '^(g|ph):' "$work/sim/nodes/node-1/state.txt"

step "the same with faults: a node's writer is SIGKILLed mid-phase"
haios sim init "$work/faulty" --nodes 5 >/dev/null
haios sim run "$work/faulty" --iterations 3 --seed 3 --faults kill=0.5
set +e
haios sim check "$work/faulty" | tee "$work/check.txt"
code=${PIPESTATUS[0]}
set -e
echo "exit code: $code (2 = invariants violated: the half-done transition recovery must fix)"

victim=$(sed -n 's/^\[atomicity\] \(node-[0-9]*\).*/\1/p' "$work/check.txt" | head -n 1)
if [[ -n "$victim" ]]; then
  step "the WAL of $victim, killed mid-phase, as haios reads it"
  haios wal verify "$work/faulty/nodes/$victim" || true
  haios wal tail "$work/faulty/nodes/$victim" -n 4 --no-follow | cut -c1-110
fi

printf '\nThe demo repos are in %s\n' "$work"
