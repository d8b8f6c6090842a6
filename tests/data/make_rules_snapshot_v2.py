"""Writes tests/data/rules-snapshot-v2.bin: a RuleState snapshot of version 2 (before
handset state), made with that version's code first on the path."""
import sys
import numpy as np
from alerts.rules import RuleState, SNAPSHOT_VERSION
from engine.config import Rules
from geofence.verdict import IN, OUT

assert SNAPSHOT_VERSION == 2
T0 = 1_700_000_000_000
state = RuleState(3, Rules())
# subject 0: two fixes out (zone_exit open), subject 1: one fix in then marked lost,
# subject 2: never a fix
state.apply(np.array([0, 0, 1], np.int32), np.array([T0, T0 + 60_000, T0], np.int64),
            np.array([OUT, OUT, IN], np.int8), np.array([OUT, OUT, OUT], np.int8),
            np.array([-1, -1, -1], np.int32))
state.mark_signal_lost([1])
open(sys.argv[1], "wb").write(state.snapshot())
