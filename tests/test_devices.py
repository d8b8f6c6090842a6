"""DeviceBook: device ids -> device indices -> subjects, looked up per decoded batch.

Checked against a plain dict: str ids and numeric (bin) ids agree, unknown ids give -1,
indices survive growth of the table, deactivated devices keep their index.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.decode import decode_batch
from ingest.devices import DeviceBook, mark_unknown
from ingest.protocol import DEVICE, OK, TIME, UNKNOWN_DEVICE, encode_cols, encode_rows

NOW = 1_700_000_000_000


def decoded(devices, numeric=False, t=NOW):
    n = len(devices)
    args = (np.array(devices) if numeric else list(devices), np.full(n, t), np.full(n, 117.5),
            np.full(n, 34.8))
    frame = encode_cols("c", 1, *args) if numeric else encode_rows("c", 1, *args)
    batch = decode_batch(frame, NOW)
    assert batch.error == 0 and batch.device_numeric == numeric
    return batch


def test_str_and_numeric_ids_agree():
    book = DeviceBook()
    ids = ["13800138000", "0", "007", "中国移动", "9223372036854775807"]
    assert book.add(ids, [5, 6, 7, 8, 9]).tolist() == [0, 1, 2, 3, 4]
    assert book.lookup(decoded(ids)).tolist() == [0, 1, 2, 3, 4]
    # a numeric id means its decimal string: 7 is "7", not "007"
    assert book.lookup(decoded([13800138000, 0, 7, 9223372036854775807], numeric=True)
                       ).tolist() == [0, 1, -1, 4]
    assert book.subject_of.tolist() == [5, 6, 7, 8, 9]


def test_unknown_and_invalid_ids():
    book = DeviceBook()
    book.add(["13800138000"], [0])
    batch = decoded(["13800138001", "13800138000", "", "x" * 33])
    assert batch.reason.tolist() == [OK, OK, DEVICE, DEVICE]
    idx = book.lookup(batch)
    assert idx.tolist() == [-1, 0, -1, -1]
    assert book.lookup(decoded([-1, 13800138001], numeric=True)).tolist() == [-1, -1]
    assert book.index_of(["13800138000", "nope"]).tolist() == [0, -1]


def test_mark_unknown():
    book = DeviceBook()
    book.add(["a"], [0])
    reason = np.array([OK, OK, DEVICE, TIME, OK], np.int8)
    assert mark_unknown(np.array([0, -1, -1, -1, 0], np.int32), reason) == 1
    assert reason.tolist() == [OK, UNKNOWN_DEVICE, DEVICE, UNKNOWN_DEVICE, OK]


def test_growth_keeps_every_index():
    book = DeviceBook(capacity=16)
    ids = [f"1{i:010d}" for i in range(5000)]
    for start in range(0, len(ids), 700):
        chunk = ids[start:start + 700]
        assert book.add(chunk, np.arange(start, start + len(chunk))).tolist() == \
            list(range(start, start + len(chunk)))
    assert len(book) == 5000
    assert book.lookup(decoded(ids)).tolist() == list(range(5000))
    assert book.lookup(decoded([int(i) for i in ids], numeric=True)).tolist() == list(range(5000))
    assert (book.subject_of == np.arange(5000)).all()


def test_deactivate_keeps_the_index():
    book = DeviceBook()
    book.add(["a", "b", "c"], [0, 1, 2])
    book.deactivate(["b"])
    assert book.lookup(decoded(["a", "b", "c"])).tolist() == [0, -1, 2]
    assert book.index_of(["b"]).tolist() == [1]
    assert book.active.tolist() == [True, False, True]
    assert len(book) == 3
    book.add(["d"], [3])                        # a new device never takes index 1
    assert book.index_of(["d"]).tolist() == [3]
    assert book.add(["b"], [9]).tolist() == [1]  # re-added: same index, new subject
    assert book.lookup(decoded(["b"])).tolist() == [1]
    assert book.subject_of[1] == 9
    with pytest.raises(KeyError):
        book.deactivate(["a", "zz"])
    assert book.active.tolist() == [True, True, True, True]


def test_add_refuses_bad_ids():
    book = DeviceBook()
    for bad in ([""], ["x" * 33], [13800138000]):
        with pytest.raises(ValueError):
            book.add(bad, [0])
    with pytest.raises(ValueError):
        book.add(["a", "a"], [1, 2])
    with pytest.raises(ValueError):
        book.add(["a"], [1, 2])
    with pytest.raises(ValueError):
        book.add(["\x00"], [1])
    assert len(book) == 0
    assert book.add(["a", "a"], [1, 1]).tolist() == [0, 0]


# Registered ids never hold a NUL (the registry and `DeviceBook.add` refuse them).
IDS = st.one_of(st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=32),
                st.integers(0, 2**63 - 1).map(str),
                st.integers(0, 999).map(lambda i: f"{i:05d}"))


@given(st.lists(IDS, unique=True, max_size=60), st.lists(IDS, max_size=30), st.data())
def test_lookup_matches_a_dict(known, asked, data):
    book = DeviceBook(capacity=4)
    model = {}
    for start in range(0, len(known), 7):       # several adds: growth in between
        chunk, base = known[start:start + 7], len(model)
        assert book.add(chunk, [-k for k in range(len(chunk))]).tolist() == \
            list(range(base, base + len(chunk)))
        model.update((d, base + k) for k, d in enumerate(chunk))
    gone = data.draw(st.lists(st.sampled_from(known), max_size=5)) if known else []
    if gone:
        book.deactivate(gone)
    queries = asked + known
    want = [model[d] if d in model and d not in gone else -1 for d in queries]
    if queries:
        assert book.lookup(decoded(queries)).tolist() == want
    numeric = [d for d in queries if d.isascii() and d.isdigit() and len(d) < 19]
    if numeric:
        want = [model.get(str(int(d)), -1) if str(int(d)) not in gone else -1 for d in numeric]
        assert book.lookup(decoded([int(d) for d in numeric], numeric=True)).tolist() == want
