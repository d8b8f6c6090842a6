"""The config: unknown keys named with the near one, every key in its range, all at once."""

import math
import tomllib
from dataclasses import fields

import pytest

from alerts._rules_kernel import RUN_MAX
from engine import config
from engine.address import check_zmq_endpoint, parse_host_port
from engine.config import CHECKS, ConfigError, Settings, from_mapping

WEBHOOK = '[alerts.webhooks."370402001"]\nurl = "https://example.org/h"\nsecret = "s"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        from_mapping(tomllib.loads(text), source="geofence.toml")
    return e.value.problems


def test_every_key_of_every_section_has_a_range():
    sections = {f.name: f.default for f in fields(Settings) if f.name != "source"}
    assert set(CHECKS) == set(sections)
    for name, default in sections.items():
        assert set(CHECKS[name]) == {f.name for f in fields(default)}, name


def test_the_defaults_are_in_range_and_the_fix_counts_fit_the_rules_counters():
    assert config.check(Settings()) == []
    assert config.MAX_RUN_FIXES == RUN_MAX


@pytest.mark.parametrize("text, problem", [     # the six, each named where it is
    ("[desk]\nsession_hours = inf", "geofence.toml: [desk] session_hours: must be a finite "
                                    "number in (0, 8760], not inf"),
    ("[rules]\ncheck_every_s = 0", "geofence.toml: [rules] check_every_s: must be a finite "
                                   "number in [0.01, 3600], not 0.0"),
    ("[rules]\nexit_fixes = 0", "geofence.toml: [rules] exit_fixes: must be a whole number "
                                "in 1..255, not 0"),
    ('[desk]\nbind = "127.0.0.1:99999"', "geofence.toml: [desk] bind: port must be 1..65535"),
    ("[ingest]\nmax_fix_age_s = -1", "geofence.toml: [ingest] max_fix_age_s: must be a whole "
                                     "number in 1..316224000, not -1"),
    ("[rules]\nfeed_outage_share = nan", "geofence.toml: [rules] feed_outage_share: must be "
                                         "a finite number in (0, 1], not nan"),
    ("[rules]\nfeed_outage_share = 1.5", "[rules] feed_outage_share: must be a finite number"),
    ("[rules]\nexit_fixes_key = 256", "[rules] exit_fixes_key: must be a whole number in 1..255"),
    ("[rules]\nescalate_high_s = 0", "[rules] escalate_high_s: must be a whole number in 1.."),
    ("[rules]\nexit_margin_m = -inf", "[rules] exit_margin_m: must be a finite number in [0,"),
    ("[rules]\nclock = \"event\"", "[rules] clock: must be one of wall, feed; not 'event'"),
    ("[ingest]\ndefault_acc_gps_m = 0", "[ingest] default_acc_gps_m: must be a finite number"),
    ("[ingest]\nmax_backlog_fixes = 0", "[ingest] max_backlog_fixes: must be a whole number"),
    ('[ingest]\nbind = "127.0.0.1:5555"', "[ingest] bind: must be tcp://HOST:PORT or ipc://"),
    ('[ingest]\nmetrics_bind = ":9105"', "[ingest] metrics_bind: must be HOST:PORT"),
    ('[alerts]\npublish = "tcp://127.0.0.1:70000"', "[alerts] publish: port must be 1..65535"),
    ("[storage]\nkeep_fixes_days = 0", "[storage] keep_fixes_days: must be a whole number"),
    ('[storage]\npath = ""', "[storage] path: must not be empty"),
    ('[storage]\nsync = "always"', "[storage] sync: must be one of normal, full"),
    ("[desk]\nlogin_attempts = 0", "[desk] login_attempts: must be a whole number in 1.."),
    ('[desk]\ncookie_secure = "yes"', "[desk] cookie_secure: must be true or false, not 'yes'"),
    ("[rules]\nexit_fixes = 2.5", "[rules] exit_fixes: must be a whole number, not 2.5"),
    ('[desk]\nhosts = ["desk.example.org:8080"]', "[desk] hosts: entries must be host names"),
    (WEBHOOK + "timeout_s = inf", "[alerts] webhooks: webhook \"370402001\": timeout_s must"),
    ("[rules]\nnight_from_hour = 6", "[rules] night_from_hour: a night must end at another"),
    ("[rules]\nnight_absence_nights = 8", "[rules] night_absence_nights: must be a whole"),
])
def test_a_value_out_of_range_is_one_line_naming_file_section_and_key(text, problem):
    found = problems(text)
    assert len(found) == 1 and found[0].startswith("geofence.toml: "), found
    assert problem in found[0] and "\n" not in found[0], found


@pytest.mark.parametrize("text, problem", [
    ("[rules]\nexclusion_fixs = 1", 'geofence.toml: [rules]: unknown key "exclusion_fixs"; '
                                    'did you mean "exclusion_fixes"?'),
    ("[desks]\nbind = \"\"", "geofence.toml: unknown section [desks]; did you mean [desk]?"),
    ("[colour]\nx = 1", "geofence.toml: unknown section [colour] (known: storage, layers, "),
    (WEBHOOK + "timeot_s = 3", 'geofence.toml: [alerts] webhooks: webhook "370402001": '
                               'unknown key "timeot_s"; did you mean "timeout_s"?'),
    ("storage = 1", "geofence.toml: [storage] must be a table"),
])
def test_an_unknown_section_or_key_is_named_with_the_near_one(text, problem):
    found = problems(text)
    assert len(found) == 1 and found[0].startswith(problem), found


def test_every_problem_of_the_file_is_reported_at_once():
    found = problems("[desk]\nsession_hours = inf\nbind = \"127.0.0.1:99999\"\n"
                     "[rules]\ncheck_every_s = 0\nexit_fixes = 0\nfeed_outage_share = nan\n"
                     "exit_fixs = 2\n[ingest]\nmax_fix_age_s = -1\n[desks]\n")
    keys = ["session_hours", "[desk] bind", "check_every_s", "[rules] exit_fixes:",
            "feed_outage_share", '"exit_fixs"', "max_fix_age_s", "[desks]"]
    assert len(found) == len(keys)
    for key in keys:
        assert sum(key in p for p in found) == 1, key


def test_values_in_range_load_including_any_free_port_and_ipc():
    settings = from_mapping(tomllib.loads(
        '[ingest]\nbind = "ipc:///run/geofence/ingest.sock"\nmetrics_bind = ""\n'
        '[alerts]\npublish = "tcp://127.0.0.1:*"\n[desk]\nbind = "[::1]:0"\n'
        "session_hours = 8760\n[rules]\nfeed_outage_share = 1\npermit_overstay_after_s = 0\n"
        "exit_fixes = 255\ncheck_every_s = 0.01\n" + WEBHOOK), source="geofence.toml")
    assert settings.rules.feed_outage_share == 1.0 and settings.desk.session_hours == 8760.0
    assert config.check(settings) == []


def test_settings_built_in_code_are_checked_by_the_same_ranges():
    from dataclasses import replace

    bad = replace(Settings(), rules=replace(Settings().rules, check_every_s=math.inf))
    assert config.check(bad) == ["built-in defaults: [rules] check_every_s: must be a finite "
                                 "number in [0.01, 3600], not inf"]


@pytest.mark.parametrize("text, parsed", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)),
    ("localhost:65535", ("localhost", 65535))])
def test_host_port_is_parsed_in_one_place(text, parsed):
    assert parse_host_port(text) == parsed


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:", ":80", "127.0.0.1:99999",
                                  "127.0.0.1:-1", "127.0.0.1:８０", "host name:80"])
def test_a_bad_host_port_is_refused(text):
    with pytest.raises(ValueError):
        parse_host_port(text)


@pytest.mark.parametrize("text", ["tcp://127.0.0.1:99999", "tcp://127.0.0.1", "udp://x:1",
                                  "inproc://ingest", "ipc://", "127.0.0.1:5555", ""])
def test_a_bad_zmq_endpoint_is_refused(text):
    with pytest.raises(ValueError):
        check_zmq_endpoint(text)


# -- supervision levels: [rules.strict] and [rules.loose] (SPEC §11) -------------------------

def test_every_rules_key_is_per_level_or_says_why_not():
    from engine.config import NOT_PER_LEVEL, PER_LEVEL_KEYS, Rules

    names = {f.name for f in fields(Rules)}
    assert set(PER_LEVEL_KEYS) | set(NOT_PER_LEVEL) == names
    assert not set(PER_LEVEL_KEYS) & set(NOT_PER_LEVEL)
    from alerts._rules_kernel import LIMIT_NAMES
    assert set(LIMIT_NAMES) <= set(PER_LEVEL_KEYS)


def test_built_in_levels_strict_is_stricter_and_loose_more_lenient_than_normal():
    from engine.config import LOOSE_DEFAULTS, STRICT_DEFAULTS

    rules = Settings().rules
    strict, loose = rules.for_level("strict"), rules.for_level("loose")
    assert rules.for_level("normal") is rules
    assert (strict.exit_fixes, strict.signal_lost_after_s) == (1, 1800)   # the example
    for key in STRICT_DEFAULTS:
        assert getattr(strict, key) < getattr(rules, key), key
    for key in LOOSE_DEFAULTS:
        assert getattr(loose, key) > getattr(rules, key), key
    # key persons keep their one-fix exit at every level; shared keys stay shared
    assert strict.exit_fixes_key == loose.exit_fixes_key == rules.exit_fixes_key == 1
    assert strict.escalate_high_s == loose.escalate_high_s == rules.escalate_high_s
    with pytest.raises(ValueError, match="unknown supervision level 'medium'"):
        rules.for_level("medium")


def test_a_built_in_level_default_never_turns_strict_looser_than_normal():
    rules = from_mapping(tomllib.loads(
        "[rules]\nsignal_lost_after_s = 600\nexit_fixes = 5\npermit_overstay_after_s = 300\n"
    ), source="geofence.toml").rules
    strict, normal, loose = (rules.for_level(level) for level in ("strict", "normal", "loose"))
    for key in ("signal_lost_after_s", "exit_fixes", "permit_overstay_after_s",
                "possible_exit_fixes"):
        assert getattr(strict, key) <= getattr(normal, key) <= getattr(loose, key), key
    assert (strict.signal_lost_after_s, strict.exit_fixes) == (600, 1)
    assert (loose.signal_lost_after_s, loose.exit_fixes) == (7200, 5)


def test_level_tables_override_rules_and_the_built_in_level_defaults():
    rules = from_mapping(tomllib.loads(
        "[rules]\nexit_fixes = 4\nreturn_fixes = 3\nsignal_lost_after_s = 5400\n"
        "[rules.strict]\nsignal_lost_after_s = 600\nreturn_fixes = 4\n"
        "[rules.loose]\nexit_fixes = 6\n"), source="geofence.toml").rules
    normal, strict, loose = (rules.for_level(level) for level in ("normal", "strict", "loose"))
    assert (normal.exit_fixes, normal.return_fixes, normal.signal_lost_after_s) == (4, 3, 5400)
    # strict: its table, then its built-in defaults, then [rules]
    assert (strict.signal_lost_after_s, strict.return_fixes, strict.exit_fixes) == (600, 4, 1)
    assert strict.possible_exit_fixes == 2 and strict.exclusion_fixes == normal.exclusion_fixes
    # loose: exit_fixes from its table, signal_lost from its defaults, return from [rules]
    assert (loose.exit_fixes, loose.signal_lost_after_s, loose.return_fixes) == (6, 7200, 3)
    assert config.check(Settings(rules=rules)) == []


def test_level_less_keys_work_as_before():
    rules = from_mapping(tomllib.loads("[rules]\nexit_fixes = 3\n"), source="g.toml").rules
    assert rules.exit_fixes == 3 and rules.strict == {} and rules.loose == {}


@pytest.mark.parametrize("text, problem", [
    ("[rules.strict]\nexit_fixes = 0", "geofence.toml: [rules.strict] exit_fixes: must be a "
                                       "whole number in 1..255, not 0"),
    ("[rules.loose]\nsignal_lost_after_s = 1.5", "geofence.toml: [rules.loose] "
                                                 "signal_lost_after_s: must be a whole number, "
                                                 "not 1.5"),
    ("[rules.loose]\npermit_overstay_after_s = -1", "[rules.loose] permit_overstay_after_s: "
                                                    "must be a whole number in 0.."),
    ("[rules.strict]\nexit_fixs = 1", 'geofence.toml: [rules.strict]: unknown key "exit_fixs"; '
                                      'did you mean "exit_fixes"?'),
    ("[rules.strict]\nescalate_high_s = 60", "geofence.toml: [rules.strict] escalate_high_s: "
                                             "not per level (escalation follows an alarm's "
                                             "severity, not its subject); set it in [rules]"),
    ("[rules.loose]\nexit_margin_m = 500.0", "[rules.loose] exit_margin_m: not per level"),
    ("[rules.strict]\nfeed_outage_share = 0.2", "[rules.strict] feed_outage_share: not per level"),
    ('[rules.loose]\nclock = "feed"', "[rules.loose] clock: not per level"),
    ("[rules.strict]\ncheck_every_s = 0.5", "[rules.strict] check_every_s: not per level"),
    ("[rules.strict.loose]\nexit_fixes = 1", "[rules.strict] loose: not per level"),
    ("[rules]\nstrict = 3", "geofence.toml: [rules] strict: must be a table, not 3"),
    ("[rules.normal]\nexit_fixes = 1", "geofence.toml: [rules.normal]: the normal level (普管) "
                                       "is [rules] itself; set its keys there"),
])
def test_a_bad_level_key_is_one_line_naming_the_level_table(text, problem):
    found = problems(text)
    assert len(found) == 1 and found[0].startswith("geofence.toml: "), found
    assert problem in found[0] and "\n" not in found[0], found


def test_every_problem_of_the_level_tables_is_reported_with_the_rest():
    found = problems("[rules]\nexit_fixes = 0\n[rules.strict]\nexit_fixes = 0\nclock = \"feed\"\n"
                     "[rules.loose]\nsignal_lost_after_s = 0\nescalate_high_s = 1\n")
    assert len(found) == 5, found
    for part in ("[rules] exit_fixes:", "[rules.strict] exit_fixes:", "[rules.strict] clock:",
                 "[rules.loose] signal_lost_after_s:", "[rules.loose] escalate_high_s:"):
        assert sum(part in p for p in found) == 1, part


def test_level_tables_built_in_code_are_checked_too():
    from dataclasses import replace

    from alerts.rules import RuleState, RulesError

    bad = replace(Settings(), rules=replace(Settings().rules, strict={"exit_fixes": 0,
                                                                      "clock": "feed"}))
    assert config.check(bad) == [
        "built-in defaults: [rules.strict] exit_fixes: must be a whole number in 1..255, not 0",
        "built-in defaults: [rules.strict] clock: not per level (the engine has one clock); "
        "set it in [rules]"]
    with pytest.raises(RulesError, match=r"rules\.strict\.exit_fixes must be an integer"):
        RuleState(1, replace(Settings().rules, strict={"exit_fixes": 0}))
