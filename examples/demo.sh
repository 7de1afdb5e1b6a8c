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

printf '\nThe demo repo is in %s\n' "$repo"
