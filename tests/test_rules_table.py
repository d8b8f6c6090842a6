"""Alarm rules (SPEC §6): a table of cases a supervisor would recognise.

Each case is one person's fixes as they arrive (one batch per fix, a minute apart unless
a time is given), written as the area verdict, optionally ``/zone`` (inside one of the
person's exclusion zones) or ``/near-zone`` (unsure for a zone); ``LOST`` is the clock
rules marking the person's signal as lost. Expected events name the fix that raised them
(counting from 1) and, for a return, the fix of the exit it closes. Every case is also
run through the plain reference model, which must agree event for event. A case's
`level` is the person's supervision level (SPEC §11), judged by that level's settings.
"""

from dataclasses import dataclass

import numpy as np
import pytest

from alerts.registry import LEVELS
from alerts.rules import EVENT_TYPES, RuleState, RulesError, severity
from engine.config import Rules
from geofence.verdict import IN, OUT, UNSURE
from tests.rules_reference import ReferenceRules, compiled_view

VERDICTS = {"in": IN, "unsure": UNSURE, "out": OUT}
ZONE = 7  # the index of the person's exclusion zone in these cases


@dataclass(frozen=True)
class E:
    """An expected event: type, raised by fix number `at`, linked to fix number `links`."""

    type: str
    at: int
    severity: str
    links: int | None = None


@dataclass(frozen=True)
class Case:
    story: str
    fixes: str                            # space-separated tokens, see the module docstring
    expect: tuple[E, ...]
    key: bool = False
    minutes: tuple[int, ...] | None = None  # event time of each fix; default 1, 2, 3...
    late: tuple[int, ...] = ()            # fix numbers counted as late
    rules: Rules = Rules()
    level: str = "normal"

    @property
    def rule_class(self) -> int:
        return LEVELS.index(self.level) * 2 + self.key


CASES = [
    Case("two fixes outside, then one inside", "out out in",
         (E("zone_exit", 2, "high"),)),
    Case("one fix outside, one unsure, one outside: unsure does not reset",
         "out unsure out", (E("zone_exit", 3, "high"),)),
    Case("one fix outside, then inside, then outside: inside resets", "out in out", ()),
    Case("key person, one fix outside", "out", (E("zone_exit", 1, "critical"),), key=True),
    Case("out, out, in, in: an exit and then the return, linked to it", "out out in in",
         (E("zone_exit", 2, "high"), E("zone_return", 4, "info", links=2))),
    Case("out, out, in, unsure, in: unsure interrupts the return", "out out in unsure in",
         (E("zone_exit", 2, "high"),)),
    Case("away and back twice: two exits, two returns",
         "out out in in out out in in",
         (E("zone_exit", 2, "high"), E("zone_return", 4, "info", links=2),
          E("zone_exit", 6, "high"), E("zone_return", 8, "info", links=6))),
    Case("out x5: one zone_exit, it stays open", "out out out out out",
         (E("zone_exit", 2, "high"),)),
    Case("unsure, unsure, out: a possible exit", "unsure unsure out",
         (E("possible_exit", 3, "medium"),)),
    Case("unsure x6: one possible exit per episode", "unsure unsure unsure unsure unsure unsure",
         (E("possible_exit", 3, "medium"),)),
    Case("unsure x3, in, unsure x3: a new episode after an inside fix",
         "unsure unsure unsure in unsure unsure unsure",
         (E("possible_exit", 3, "medium"), E("possible_exit", 7, "medium"))),
    Case("out, out, out with no unsure: an exit, never a possible exit", "out out out",
         (E("zone_exit", 2, "high"),)),
    Case("unsure, unsure, out, out: possible, then confirmed",
         "unsure unsure out out",
         (E("possible_exit", 3, "medium"), E("zone_exit", 4, "high"))),
    Case("key person unsure, unsure, out: the exit, not a possible exit",
         "unsure unsure out", (E("zone_exit", 3, "critical"),), key=True),
    Case("late fix outside after a newer inside fix: counted late, no alarm",
         "in out", (), minutes=(10, 5), late=(2,)),
    Case("late fixes cannot complete an exit", "out in out", (), minutes=(1, 3, 2), late=(3,)),
    Case("two devices at the same instant: the second is late", "in out out",
         (), minutes=(1, 2, 2), late=(3,)),
    Case("in an exclusion zone", "in/zone", (E("exclusion_entry", 1, "critical"),)),
    Case("in an exclusion zone three times: one entry", "in/zone in/zone in/zone",
         (E("exclusion_entry", 1, "critical"),)),
    Case("in the zone, unsure for it, in again: still the same entry",
         "in/zone in/near-zone in/zone", (E("exclusion_entry", 1, "critical"),)),
    Case("in the zone, away from it, in again: a new entry",
         "in/zone in in/zone",
         (E("exclusion_entry", 1, "critical"), E("exclusion_entry", 3, "critical"))),
    Case("two unsure for the zone", "in/near-zone in/near-zone",
         (E("possible_exclusion", 2, "medium"),)),
    Case("unsure for the zone, away, unsure again: no possible exclusion",
         "in/near-zone in in/near-zone", ()),
    Case("unsure for the zone x2, then in it: possible, then the entry",
         "in/near-zone in/near-zone in/zone",
         (E("possible_exclusion", 2, "medium"), E("exclusion_entry", 3, "critical"))),
    Case("outside home and in an exclusion zone at once",
         "out/zone out/zone",
         (E("exclusion_entry", 1, "critical"), E("zone_exit", 2, "high"))),
    Case("signal lost then a fix", "in LOST in", (E("signal_restored", 2, "info"),)),
    Case("signal lost then two fixes outside: restored, then the exit", "LOST out out",
         (E("signal_restored", 1, "info"), E("zone_exit", 2, "high"))),
    Case("signal lost, then a late fix: not restored yet", "in LOST in in",
         (E("signal_restored", 3, "info"),), minutes=(5, 4, 6), late=(2,)),
    Case("stricter settings: three fixes outside make an exit", "out out in out out out",
         (E("zone_exit", 6, "high"),), rules=Rules(exit_fixes=3)),
    # supervision levels (built-in [rules.strict] / [rules.loose] unless a case sets them)
    Case("strict (严管): one fix outside is an exit", "out in in",
         (E("zone_exit", 1, "high"), E("zone_return", 3, "info", links=1)), level="strict"),
    Case("strict key person: one fix outside, critical", "out",
         (E("zone_exit", 1, "critical"),), level="strict", key=True),
    Case("strict: two unsure fixes are a possible exit", "unsure unsure",
         (E("possible_exit", 2, "medium"),), level="strict"),
    Case("normal: two unsure fixes are not yet a possible exit", "unsure unsure", ()),
    Case("loose (宽管): two fixes outside are not yet an exit", "out out in out out", (),
         level="loose"),
    Case("loose: three fixes outside make the exit", "out out unsure out",
         (E("zone_exit", 4, "high"),), level="loose"),
    Case("loose key person: one fix outside is still an exit", "out",
         (E("zone_exit", 1, "critical"),), level="loose", key=True),
    Case("loose: exclusion zones are as strict as for everyone", "in/zone",
         (E("exclusion_entry", 1, "critical"),), level="loose"),
    Case("strict with [rules.strict] exit_fixes = 2: two fixes", "out in out out",
         (E("zone_exit", 4, "high"),), level="strict", rules=Rules(strict={"exit_fixes": 2})),
    Case("normal is untouched by [rules.strict]", "out out",
         (E("zone_exit", 2, "high"),), rules=Rules(strict={"exit_fixes": 5})),
    Case("[rules.loose] return_fixes = 3: the return takes three fixes inside",
         "out out out in in in", (E("zone_exit", 3, "high"), E("zone_return", 6, "info", links=3)),
         level="loose", rules=Rules(loose={"return_fixes": 3})),
]


def run(case: Case):
    """The case through `RuleState` and the reference, one batch per fix as they arrive."""
    tokens = case.fixes.split()
    compiled = RuleState(1, case.rules)
    reference = ReferenceRules(1, case.rules)
    key = np.array([case.rule_class], np.int8)
    events, late, number = [], [], 0
    for token in tokens:
        if token == "LOST":
            compiled.mark_signal_lost([0])
            reference.mark_signal_lost([0])
            continue
        number += 1
        area, _, zone = token.partition("/")
        xv = {"": OUT, "zone": IN, "near-zone": UNSURE}[zone]
        batch = ([0], [t_ms(case, number)], [VERDICTS[area]], [xv], [ZONE if xv != OUT else -1])
        got = compiled.apply(*batch, key)
        want, want_late = reference.apply(*batch, key)
        assert rows(got) == want
        assert list(got.late) == want_late
        assert compiled_view(compiled, 0) == reference.view(0)
        late += [number] * got.n_late
        events += [(row, number) for row in rows(got)]
    return events, late


def t_ms(case: Case, number: int) -> int:
    """Event time of fix `number` of a case."""
    return (case.minutes[number - 1] if case.minutes else number) * 60_000


def rows(events):
    return [(EVENT_TYPES[k], int(s), int(f), int(t), int(lt), int(z)) for k, s, f, t, lt, z
            in zip(events.type, events.subject, events.fix, events.t_ms, events.linked_t_ms,
                   events.zone)]


@pytest.mark.parametrize("case", CASES, ids=[c.story for c in CASES])
def test_case(case: Case):
    events, late = run(case)
    got = [(name, number, severity(name, case.key),
            None if name != "zone_return" else linked) for (name, _, _, _, linked, _), number
           in events]
    want = [(e.type, e.at, e.severity, None if e.links is None else t_ms(case, e.links))
            for e in case.expect]
    assert got == want
    assert late == list(case.late)
    for (name, _, _, t, linked, zone), number in events:
        assert t == t_ms(case, number)
        assert zone == (ZONE if name.startswith(("exclusion", "possible_exclusion")) else -1)


def test_one_batch_equals_fix_by_fix():
    """Fixes in order give the same events in one batch as one at a time."""
    story = ["out", "out", "in", "in", "unsure", "unsure", "out", "out"]
    one = RuleState(1, Rules())
    by_fix = RuleState(1, Rules())
    n = len(story)
    batch = (np.zeros(n, np.int32), np.arange(1, n + 1) * 60_000,
             [VERDICTS[v] for v in story], [OUT] * n, [-1] * n)
    whole = rows(one.apply(*batch))
    pieces = []
    for i in range(n):
        got = by_fix.apply(*(np.asarray(a)[i:i + 1] for a in batch))
        pieces += [(name, s, f + i, t, lt, z) for name, s, f, t, lt, z in rows(got)]
    assert whole == pieces
    assert [r[0] for r in whole] == ["zone_exit", "zone_return", "possible_exit", "zone_exit"]


def test_severities_follow_the_spec():
    assert severity("zone_exit", key=True) == "critical"
    assert severity("zone_exit", key=False) == "high"
    assert [severity(name, False) for name in EVENT_TYPES] == [
        "high", "info", "medium", "critical", "medium", "high", "info", "high", "critical",
        "high"]
    with pytest.raises(RulesError, match="known: zone_exit"):
        severity("exit", False)
