#!/usr/bin/env bash
# The haios demo (`make demo`): a simulated 5-node cluster on this machine (local transport, git
# coordination), real worker processes and injected faults; then haios finds the half-done
# transition, plans its recovery, carries it out, and shows the audit trail.
set -euo pipefail

work=$(mktemp -d "${TMPDIR:-/tmp}/haios-demo.XXXXXX")
sim="$work/cluster"
faults="kill=0.25,torn=0.05,partition=0.1,slowfsync=0.3"
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
run() { printf '%s$ %s%s\n' "$bold" "$*" "$plain"; set +e; "$@"; code=$?; set -e; echo "(exit $code)"; }

step "1. A desired-state repo for a simulated cluster of 5 nodes (a git repo; node roots under nodes/)"
run haios sim init "$sim" --nodes 5
git -C "$sim" log --oneline

step "2. Run the cluster through its phases with faults: a node's writer process is SIGKILLed mid-phase"
run haios sim run "$sim" --iterations 3 --seed 2 --faults "$faults"

step "3. The half-done phase must outlive its Φ timeout (about 2 s for these sub-second phases)"
started=$SECONDS
for _ in $(seq 120); do  # at most a minute
  plan_json=$(haios --repo "$sim" --output json plan 2>/dev/null || true)
  if python3 -c 'import json, sys; sys.exit(any(t["verdict"] == "wait" for t in json.loads(sys.argv[1])["traces"]))' "$plan_json"; then
    break
  fi
  sleep 0.5
done
echo "plan no longer waits (after about $((SECONDS - started)) s)"

step "4. haios doctor: every detector and integrity check (exit 2: findings)"
run haios --repo "$sim" doctor

step "5. haios plan: what reconcile would do, changing nothing (exit 2: changes pending)"
run haios --repo "$sim" plan --out "$work/plan.json"

step "6. haios reconcile --plan: exactly that plan — compensate the side effects, then roll back"
run haios --repo "$sim" reconcile --plan "$work/plan.json"

step "7. haios doctor again: healthy (exit 0), and the simulator's invariants hold"
run haios --repo "$sim" doctor
run haios sim check "$sim"

step "8. haios audit: every recovery is a git commit with its trace, result and fencing token"
run haios --repo "$sim" audit
trace=$(haios --repo "$sim" --output json audit | python3 -c 'import json,sys; print(json.load(sys.stdin)["commits"][0]["traces"][0]["trace_id"])')
run haios --repo "$sim" audit --trace "$trace"
git -C "$sim" log -1 --format='%n%B' | sed 's/^/    /'

step "9. A second reconcile has nothing to do and commits nothing (exit 0)"
run haios --repo "$sim" reconcile
git -C "$sim" log --oneline | head -3

step "10. The metrics Prometheus would scrape (docs/metrics.md): recoveries, time to detect, ..."
haios --repo "$sim" metrics textfile "$work/haios.prom"
grep -E '^(phase_recoveries_total|phase_detect_latency_seconds_count|haios_reconcile_total)' "$work/haios.prom" | grep -v ' 0.0$' || true
echo "(the whole file: $work/haios.prom, for node_exporter's textfile collector)"

step "11. The timeline as one HTML page: a swimlane per node, the fault and its recovery marked"
run haios --repo "$sim" report --html "$work/report.html" --since 1h
echo "open $work/report.html in a browser"

printf '\nThe demo cluster is in %s\n' "$sim"
