"""Where haios keeps its own files in a desired-state repo: every ``status/`` path in one place.

``status/`` is haios's, committed with each audit commit (journals, the ledger, applied overrides,
membership, placement, alerts, the cluster summary) except ``status/observed/``, this machine's cache
(what doctor remembers between passes, mirrors of remote nodes, the run record for the metrics),
which ``haios init`` puts in ``.gitignore``. ``.haios/`` holds the schemas editors validate against.
"""

from __future__ import annotations

STATUS_DIR = "status"
STATUS_FILE = f"{STATUS_DIR}/cluster.yaml"  # the cluster summary each run writes
JOURNAL_DIR = f"{STATUS_DIR}/recoveries"  # one journal per trace
SEL_DIR = f"{STATUS_DIR}/sel"  # the side-effect ledger
SEL_KEYS_DIR = f"{SEL_DIR}/keys"
BREAKERS_FILE = f"{SEL_DIR}/breakers.yaml"
SWINGS_FILE = f"{SEL_DIR}/swings.yaml"
APPLIED_FILE = f"{STATUS_DIR}/overrides/applied.yaml"  # the signed overrides carried out, by nonce
MEMBERSHIP_FILE = f"{STATUS_DIR}/membership.yaml"  # isolations and evictions
PLACEMENT_FILE = f"{STATUS_DIR}/replication.yaml"  # replica groups
ALERTS_DIR = f"{STATUS_DIR}/alerts"
TOMBSTONES_FILE = f"{STATUS_DIR}/vclock-tombstones.yaml"  # pruned vector-clock entries (SPEC §7)
POLICY_FILE = f"{STATUS_DIR}/policy.yaml"  # the compiled desired state each member was last given

OBSERVED_DIR = f"{STATUS_DIR}/observed"  # this machine's cache, not committed
MIRROR_DIR = f"{OBSERVED_DIR}/mirror"  # copies of remote nodes' WAL and control files
RUNS_FILE = f"{OBSERVED_DIR}/runs.json"  # this machine's reconcile runs, for the metrics

SCHEMA_DIR = ".haios/schemas"  # the JSON Schemas the repo's files name for editors

# haios's cluster-wide records that a run reads whole: doctor checks each can be read
RECORDS = (APPLIED_FILE, MEMBERSHIP_FILE, BREAKERS_FILE, SWINGS_FILE, PLACEMENT_FILE, TOMBSTONES_FILE)
