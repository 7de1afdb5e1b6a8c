"""The simulator and chaos harness (SPEC §11): a real local cluster, real processes, injected faults."""
