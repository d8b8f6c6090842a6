"""locate.sqlite (carriers.locate_store): a request's life, and the change counter readers
follow (the ingest for new requests, the desk for /api/events)."""

import pytest

from carriers.locate_store import LocateStore

T0 = 1_700_000_000_000


@pytest.fixture
def store(tmp_path):
    s = LocateStore(tmp_path / "locate.sqlite")
    yield s
    s.close()


def test_a_request_is_pending_then_sent_then_answered_once(store):
    r = store.request("S1", "13800138000", "370402001", "desk", "town1", T0)
    assert (r.state, r.requested_by, r.latency_ms) == ("pending", "town1", None)
    assert [p.id for p in store.pending()] == [r.id]
    store.mark_sent(r.id, "cmcc", T0 + 100)
    assert store.pending() == [] and [o.id for o in store.open_requests()] == [r.id]
    assert store.answer([(r.id, T0 + 900, T0 + 800, "gps", 117.5, 34.8, 8.0)]) == 1
    assert store.answer([(r.id, T0 + 950, T0 + 900, "cell", 117.6, 34.9, 900.0)]) == 0, \
        "an answered request takes no second answer"
    doc = store.get(r.id).to_document()
    assert (doc["state"], doc["carrier"], doc["latency_ms"], doc["handset"]) == (
        "answered", "cmcc", 900, None)
    assert doc["fix"] == {"t": T0 + 800, "lon": 117.5, "lat": 34.8, "acc": 8.0, "src": "gps"}
    assert "device" not in doc, "the phone number stays out of what the desk shows"


def test_a_handset_answer_has_no_position(store):
    r = store.request("S1", "13800138000", "370402001", "desk", "town1", T0)
    store.answer([(r.id, T0 + 500, T0 + 400, "off", None, None, None)])
    doc = store.get(r.id).to_document()
    assert (doc["fix"], doc["handset"]) == (None, "off")


def test_open_requests_time_out_and_closed_ones_do_not(store):
    old = store.request("S1", "d1", "o", "desk", "u", T0)
    answered = store.request("S2", "d2", "o", "desk", "u", T0)
    store.answer([(answered.id, T0 + 10, T0 + 10, "gps", 1.0, 1.0, 5.0)])
    fresh = store.request("S3", "d3", "o", "unsure", None, T0 + 100_000)
    assert [r.id for r in store.expire(T0 + 120_000, 120_000)] == [old.id]
    assert store.get(old.id).state == "timed_out"
    assert store.get(answered.id).state == "answered"
    assert store.get(fresh.id).state == "pending"


def test_the_change_counter_never_goes_back_even_when_everything_old_is_purged(store):
    """Readers remember the last version they saw: a purge of every closed request must not
    let the next request start again at version 1 (it would be invisible to them)."""
    for k in range(3):
        store.request(f"S{k}", f"d{k}", "o", "desk", "u", T0 + k)
        store.expire(T0 + 200_000, 1)
    seen = store.last_version()
    assert store.purge_before(T0 + 10**9) == 2, "all but the newest version's row"
    new = store.request("S9", "d9", "o", "desk", "u", T0 + 10**9)
    assert new.version > seen
    assert [r.id for r in store.pending(seen)] == [new.id]
    assert [r.id for r in store.changes_since(seen)] == [new.id]


def test_every_write_gets_a_new_version_in_order(store):
    a = store.request("S1", "d1", "o", "desk", "u", T0)
    b = store.request("S2", "d2", "o", "desk", "u", T0)
    store.mark_sent(a.id, "cmcc", T0 + 1)
    changes = store.changes_since(0)
    assert [c.id for c in changes] == [b.id, a.id]
    assert [c.version for c in changes] == sorted({c.version for c in changes})


def test_an_unknown_reason_is_refused(store):
    with pytest.raises(ValueError, match="reason"):
        store.request("S1", "d1", "o", "curious", "u", T0)
