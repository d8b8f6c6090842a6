"""Alarm episodes (SPEC §6 as amended): which alarms fold together, and what ends them.

One open alarm per subject and type, within one episode. An episode is the stretch from
the event that raised an alarm to the event that ends it; a repeat raised while the
episode runs folds into the open alarm, an alarm raised after it ended is a new one with
its own id, event time and place, and the older one stays as it is until people handle
it (a real excursion must never hide inside an older, unhandled one).

What ends an episode, by type (from the rules, `alerts._rules_kernel` and
`alerts.clock_rules`):

- `zone_exit`: the `zone_return` that links to it (`details.exit_id`, which may name a
  raised id that was folded into an older alarm). A return means the person is back in,
  so it ends every running exit episode of that subject that began before it.
- `signal_lost`, `phone_off`: the `signal_restored` after it (`details.after` says which
  one it answers; a fix is a fix, so it ends a running episode of either).
- `exclusion_entry`, `possible_exclusion`, `possible_exit`: the rules raise each at most
  once an episode and end the episode on a fix that raises nothing (a fix out of every
  exclusion zone; an `in` fix). Every one that reaches the store therefore starts its own
  episode: they never fold. So do `permit_overstay` (one a permit) and the two closing
  events, `zone_return` and `signal_restored` (each ends exactly one episode and is
  shown with it).
- `feed_outage`, `engine_fault` (no subject): nothing that ends them reaches the store;
  they fold, as before, into an open one of the same carrier or store until somebody
  acknowledges it.

Besides, a repeat folds only into an alarm nobody has taken up yet (open or escalated)
at the same office: after an acknowledgement a new event must reach people again, and
after a transfer or a delegation it belongs to the new office.
"""

# Alarm type -> the type of the alarm that ends its episode.
ENDED_BY = {"zone_exit": "zone_return", "signal_lost": "signal_restored",
            "phone_off": "signal_restored"}
# Types whose end never reaches the store: repeats fold until somebody takes them up.
UNTIL_HANDLED = frozenset({"feed_outage", "engine_fault"})
CLOSING = frozenset(ENDED_BY.values())


def folds(kind: str) -> bool:
    """Whether an alarm of this type may fold into a running episode of the same type."""
    return kind in ENDED_BY or kind in UNTIL_HANDLED


def ended_types(kind: str) -> tuple[str, ...]:
    """The types whose running episode an alarm of type `kind` ends (none for most)."""
    if kind == "zone_return":
        return ("zone_exit",)
    if kind == "signal_restored":
        return ("signal_lost", "phone_off")
    return ()
