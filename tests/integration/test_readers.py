"""Readers (lines, words, csv, jsonl) end to end: what becomes a Record, what becomes a Skip
(with its line number and reason), and what `Index.add` then stores, on the real GloVe encoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from latent.indexer import Index, InputError, Record, Skip, read_inputs
from latent.indexer.readers import detect_format
from latent.indexer.records import content_hash
from latent.search import search

BOM = b"\xef\xbb\xbf"


# -- helpers ---------------------------------------------------------------------------------
def write(path: Path, data: str | bytes) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


def jsonl(*rows) -> bytes:
    """Lines of a JSONL file: dicts are dumped, bytes and str are taken as they are."""
    out = []
    for row in rows:
        if isinstance(row, bytes):
            out.append(row)
        elif isinstance(row, str):
            out.append(row.encode("utf-8"))
        else:
            out.append(json.dumps(row).encode("utf-8"))
    return b"\n".join(out) + b"\n"


@pytest.fixture
def index(tmp_path):
    ix = Index.create(tmp_path / "idx", encoder="glove", index_type="flat")
    yield ix
    ix.close()


def stored(index: Index) -> dict[str, dict]:
    """key -> {id, kind, text, metadata} of every item in the store."""
    rows = index.store.fetch(index.store.ids().tolist())
    return {row["key"]: {**row, "id": i} for i, row in rows.items()}


def assert_searchable(index: Index, expected: dict[str, str]) -> None:
    """Each key's own text finds it first, with cosine 1; the vector index holds exactly the store."""
    for key, text in expected.items():
        hits = search(index, text, k=1)
        assert hits[0].key == key, (key, text, hits)
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].text == text
    assert np.array_equal(np.sort(index.vectors.ids()), np.sort(index.store.ids()))


def skips_of(items) -> list[tuple[int, str]]:
    return [(s.line, s.reason) for s in items if isinstance(s, Skip)]


# -- formats -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fmt", [
    ("a.csv", "csv"), ("a.CSV", "csv"), ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"),
    ("a.txt", "lines"), ("a.dat", "lines"), ("noext", "lines"), ("a.JPG", "images"), ("b.png", "images"),
])
def test_format_is_detected_by_extension(name, fmt):
    assert detect_format(name) == fmt


def test_lines_format_strips_and_numbers_lines(tmp_path):
    path = write(tmp_path / "in.txt", "  cat  \n\nthe dog\r\n   \n\tfish\n")
    items = list(read_inputs([path]))
    assert all(isinstance(r, Record) for r in items)
    assert [(r.text, r.line, r.key, r.kind) for r in items] == [
        ("cat", 1, None, "text"), ("the dog", 3, None, "text"), ("fish", 5, None, "text")]
    assert [r.metadata for r in items] == [{"source": "in.txt", "line": n} for n in (1, 3, 5)]
    assert all(r.source == path for r in items)


def test_lines_default_keys_are_content_hashes(index, tmp_path):
    path = write(tmp_path / "in.txt", "cat\nthe dog\n\nred fish\n")
    report = index.add(read_inputs([path]))
    assert (report.added, report.skipped) == (3, 0)
    texts = ["cat", "the dog", "red fish"]
    keys = {content_hash(t)[:20]: t for t in texts}
    assert set(index.store.lookup(list(keys))) == set(keys)
    items = stored(index)
    assert set(items) == set(keys)
    assert {k: v["metadata"] for k, v in items.items()} == {
        content_hash("cat")[:20]: {"source": "in.txt", "line": 1},
        content_hash("the dog")[:20]: {"source": "in.txt", "line": 2},
        content_hash("red fish")[:20]: {"source": "in.txt", "line": 4},
    }
    assert_searchable(index, keys)


def test_words_format_keys_by_word(index, tmp_path):
    path = write(tmp_path / "words.txt", "cat\n  dog \n\nhorse\n")
    items = list(read_inputs([path], fmt="words"))
    assert [(r.text, r.key, r.kind, r.line, r.metadata) for r in items] == [
        ("cat", "cat", "word", 1, {}), ("dog", "dog", "word", 2, {}), ("horse", "horse", "word", 4, {})]
    report = index.add(items)
    assert report.added == 3 and index.count() == 3
    assert {k: v["kind"] for k, v in stored(index).items()} == {"cat": "word", "dog": "word", "horse": "word"}
    assert_searchable(index, {"cat": "cat", "dog": "dog", "horse": "horse"})


def test_csv_cells_are_typed_but_text_stays_text(tmp_path):
    path = write(tmp_path / "t.csv", (
        " text , year,code,score,neg,big,zero,dotted,plus,word,empty,quoted\n"
        '1999,1999,007,2.5,-3,1e3,0,1.2.3,+5,abc,,"a, b"\n'
    ))
    [rec] = list(read_inputs([path]))
    assert rec.text == "1999" and isinstance(rec.text, str)
    assert rec.key is None and rec.line == 2
    assert rec.metadata == {"year": 1999, "code": "007", "score": 2.5, "neg": -3, "big": 1000.0, "zero": 0,
                            "dotted": "1.2.3", "plus": "+5", "word": "abc", "empty": "", "quoted": "a, b"}
    assert type(rec.metadata["year"]) is int and type(rec.metadata["score"]) is float
    assert type(rec.metadata["big"]) is float and type(rec.metadata["code"]) is str


def test_csv_text_and_key_fields(index, tmp_path):
    path = write(tmp_path / "t.csv", "id,word,colour\nw1,cat,red\nw2,dog,blue\n007,fish,green\n")
    items = list(read_inputs([path], text_field="word", key_field="id"))
    assert [(r.key, r.text, r.metadata, r.line) for r in items] == [
        ("w1", "cat", {"id": "w1", "colour": "red"}, 2),
        ("w2", "dog", {"id": "w2", "colour": "blue"}, 3),
        ("007", "fish", {"id": "007", "colour": "green"}, 4),
    ]
    index.add(items)
    assert_searchable(index, {"w1": "cat", "w2": "dog", "007": "fish"})
    hits = search(index, "dog", k=1)
    assert hits[0].metadata == {"id": "w2", "colour": "blue"}


def test_jsonl_records_keys_and_nested_metadata(tmp_path):
    path = write(tmp_path / "t.jsonl", jsonl(
        {"id": 7, "body": "cat", "tags": ["a", "b"], "info": {"year": 1999, "ok": True}},
        {"id": "x", "body": "dog", "text": "not the text field"},
    ))
    items = list(read_inputs([path], text_field="body", key_field="id"))
    assert [(r.key, r.text, r.line) for r in items] == [("7", "cat", 1), ("x", "dog", 2)]
    assert items[0].metadata == {"id": 7, "tags": ["a", "b"], "info": {"year": 1999, "ok": True}}
    assert items[1].metadata == {"id": "x", "text": "not the text field"}
    # without key_field: no key (the index derives it from the content)
    assert [r.key for r in read_inputs([path], text_field="body")] == [None, None]


# -- bad lines ---------------------------------------------------------------------------------
def test_jsonl_bad_lines_are_skipped_with_line_and_reason(index, tmp_path):
    path = write(tmp_path / "mixed.jsonl", jsonl(
        {"id": "k1", "text": "cat", "n": 1},            # 1 good
        '{"id": "k2", "text": "dog"',                  # 2 malformed (unterminated)
        "[1, 2, 3]",                                   # 3 not an object
        "",                                            # 4 blank: ignored, not a skip
        {"id": "k3", "body": "fish"},                  # 5 no text field
        {"id": "k4", "text": "   "},                   # 6 empty text
        b'{"id": "k5", "text": "caf\xe9"}',            # 7 latin-1 byte: not UTF-8
        {"id": "k6", "text": "horse", "n": 6},         # 8 good
        {"id": "k7", "text": 42},                      # 9 text is a number
        {"text": "bird"},                              # 10 no key field
        "not json at all",                             # 11 malformed
        {"id": "k8", "text": "qzxqzxqzx"},             # 12 not in the GloVe vocabulary
        '"just a string"',                             # 13 not an object
        {"id": "k9", "text": "river", "n": 9},         # 14 good
        {"id": "k10", "text": "the old piano"},        # 15 good (several words: mean vector)
    ))
    report = index.add(read_inputs([path], key_field="id"), batch_size=2)
    assert report.added == 4
    assert (report.replaced, report.metadata_updated, report.unchanged) == (0, 0, 0)
    skips = sorted(skips_of(report.skip_examples()))
    assert [line for line, _ in skips] == [2, 3, 5, 6, 7, 9, 10, 11, 12, 13]
    reasons = dict(skips)
    assert reasons[2].startswith("malformed JSON") and "column" in reasons[2]
    assert reasons[11].startswith("malformed JSON (Expecting value at column 1)")
    assert "not an object" in reasons[3] and "not an object" in reasons[13]
    assert reasons[5].startswith("no field 'text'")
    assert reasons[6] == "empty text"
    assert reasons[7] == "not valid UTF-8"
    assert reasons[9] == "field 'text' is int, not text"
    assert reasons[10] == "no key field 'id'"
    assert reasons[12] == "'qzxqzxqzx' is not in the glove vocabulary"
    assert all(s.source == path for s in report.skip_examples())
    # the skips are also kept in the store
    assert sorted((s["line"], s["reason"]) for s in index.store.skipped()) == skips

    good = {"k1": "cat", "k6": "horse", "k9": "river", "k10": "the old piano"}
    assert index.count() == 4
    items = stored(index)
    assert set(items) == set(good)
    assert items["k1"]["metadata"] == {"id": "k1", "n": 1}
    assert_searchable(index, good)


def test_skips_are_counted_per_reason_with_a_few_examples_and_recorded_once(index, tmp_path, monkeypatch):
    """Many bad lines stay in bounded memory (issue "Reliability, round 2", finding 7): the report
    counts them per kind of reason and keeps SKIP_EXAMPLES of each, in input order, while every
    skip goes to the store as it comes (in chunks); adding the same file again refreshes its
    recorded skips instead of adding rows."""
    import latent.indexer.index as index_module
    from latent.indexer.records import SKIP_EXAMPLES

    monkeypatch.setattr(index_module, "SKIP_CHUNK", 7)  # several chunks within one add
    rows = []
    for n in range(1, 121):
        rows.append("not json" if n % 3 else {"id": f"w{n}", "text": f"zq{n}zq"} if n % 2 else {"id": f"k{n}"})
    rows += [{"id": "good", "text": "cat"}]
    path = write(tmp_path / "bad.jsonl", jsonl(*rows))
    report = index.add(read_inputs([path], key_field="id"), batch_size=4)
    assert (report.added, report.skipped) == (1, 120)
    assert report.skip_counts() == {"malformed JSON (Expecting value at column 1)": 80,
                                    "... is not in the glove vocabulary": 20, "no field 'text' (text_field chooses "
                                    "the text column)": 20}
    examples = report.skip_examples()
    assert len(examples) == 3 * SKIP_EXAMPLES
    assert [s.line for s in examples] == sorted(s.line for s in examples)  # in input order
    assert [s.line for s in examples if s.reason.startswith("malformed")] == [n for n in range(1, 31) if n % 3]
    assert report.as_dict()["skip_reasons"] == report.skip_counts()
    assert len(report.as_dict()["skipped_lines"]) == len(examples)
    stored_skips = {(s["line"], s["reason"]) for s in index.store.skipped(limit=1000)}
    assert len(stored_skips) == index.store.skipped_count() == 120
    assert {line for line, _ in stored_skips} == set(range(1, 121))

    again = index.add(read_inputs([path], key_field="id"))
    assert (again.unchanged, again.skipped) == (1, 120)
    assert index.store.skipped_count() == 120  # the same file again: the table does not grow


def test_csv_bad_rows_are_skipped_with_line_and_reason(index, tmp_path):
    data = (b"key,text,year\n"          # 1 header
            b"a,cat,1999\n"             # 2 good
            b"b,dog\n"                  # 3 too few fields
            b"c,fish,2001,extra\n"      # 4 too many fields
            b"\n"                       # 5 blank: ignored
            b"d,caf\xe9,2002\n"         # 6 not UTF-8
            b"e,  ,2003\n"              # 7 empty text
            b",,\n"                     # 8 only empty cells: ignored
            b",horse,2004\n"            # 9 no key
            b"f,qzxqzxqzx,2005\n"       # 10 not in the vocabulary
            b'g,"river",2006\n'         # 11 good (quoted)
            b"h,piano,1.5\n")           # 12 good
    path = write(tmp_path / "rows.csv", data)
    report = index.add(read_inputs([path], key_field="key"))
    skips = sorted(skips_of(report.skip_examples()))
    assert skips == [
        (3, "2 fields, the header has 3"),
        (4, "4 fields, the header has 3"),
        (6, "not valid UTF-8"),
        (7, "empty text"),
        (9, "no key field 'key'"),
        (10, "'qzxqzxqzx' is not in the glove vocabulary"),
    ]
    good = {"a": "cat", "g": "river", "h": "piano"}
    assert report.added == 3 and index.count() == 3
    items = stored(index)
    assert set(items) == set(good)
    assert items["a"]["metadata"] == {"key": "a", "year": 1999}
    assert items["h"]["metadata"] == {"key": "h", "year": 1.5}
    assert_searchable(index, good)


def test_csv_line_numbers_after_a_multiline_cell(tmp_path):
    path = write(tmp_path / "m.csv", 'text,note\ncat,"two\nlines"\ndog,x,y\nfish,z\n')
    items = list(read_inputs([path]))
    assert isinstance(items[0], Record) and items[0].metadata == {"note": "two\nlines"}
    assert (items[1].line, items[1].reason) == (4, "3 fields, the header has 2")
    assert isinstance(items[2], Record) and (items[2].text, items[2].line) == ("fish", 5)


@pytest.mark.parametrize("fmt", ["lines", "words"])
def test_invalid_utf8_lines_are_skipped(index, tmp_path, fmt):
    path = write(tmp_path / "in.txt", b"cat\n\xff\xfedog\nhorse\n\x80\n\nriver\n")
    report = index.add(read_inputs([path], fmt=fmt))
    assert skips_of(report.skip_examples()) == [(2, "not valid UTF-8"), (4, "not valid UTF-8")]
    assert report.added == 3 and index.count() == 3
    words = ["cat", "horse", "river"]
    assert sorted(v["text"] for v in stored(index).values()) == words
    expected = {(w if fmt == "words" else content_hash(w)[:20]): w for w in words}
    assert set(stored(index)) == set(expected)
    assert_searchable(index, expected)


# -- inputs that cannot be read at all ----------------------------------------------------------
@pytest.mark.parametrize("order", ["missing-last", "missing-first"])
def test_missing_input_raises_before_anything_is_written(index, tmp_path, order):
    good = write(tmp_path / "good.txt", "cat\ndog\n")
    missing = str(tmp_path / "nope.txt")
    paths = [good, missing] if order == "missing-last" else [missing, good]
    generation = index.store.generation()
    with pytest.raises(InputError, match="nope.txt does not exist"):
        index.add(read_inputs(paths))
    assert index.count() == 0
    assert index.store.generation() == generation
    assert index.store.skipped_count() == 0
    # the write lock was released: a later add works
    assert index.add(read_inputs([good])).added == 2


def test_folder_with_a_text_format_or_unknown_format_is_an_input_error(tmp_path):
    good = write(tmp_path / "good.txt", "cat\n")
    with pytest.raises(InputError, match="is a folder; folders are read as format 'images'"):
        list(read_inputs([good, str(tmp_path)], fmt="lines"))
    assert detect_format(str(tmp_path)) == "images"
    with pytest.raises(InputError, match="unknown format 'xml'"):
        list(read_inputs([good], fmt="xml"))


@pytest.mark.parametrize("fmt, name, body, key", [
    ("lines", "b.txt", b"cat\ndog\n", content_hash("cat")[:20]),
    ("words", "b.txt", b"cat\ndog\n", "cat"),
    ("csv", "b.csv", b"text,n\ncat,1\ndog,2\n", content_hash("cat")[:20]),
    ("jsonl", "b.jsonl", b'{"text": "cat"}\n{"text": "dog"}\n', content_hash("cat")[:20]),
])
def test_bom_at_start_is_ignored(index, tmp_path, fmt, name, body, key):
    path = write(tmp_path / name, BOM + body)
    items = list(read_inputs([path], fmt=fmt))
    assert [type(r) for r in items] == [Record, Record]
    assert [r.text for r in items] == ["cat", "dog"]
    report = index.add(items)
    assert report.added == 2 and report.skipped == 0
    assert key in stored(index)
    assert search(index, "cat", k=1)[0].key == key


# -- adding again --------------------------------------------------------------------------------
ROWS = [{"id": f"k{i}", "text": w, "colour": c, "n": i}
        for i, (w, c) in enumerate([("cat", "red"), ("dog", "blue"), ("fish", "red"), ("horse", "green"),
                                    ("river", "blue"), ("piano", "red")])]


def test_readding_the_same_file_changes_nothing(index, tmp_path, monkeypatch):
    path = write(tmp_path / "items.jsonl", jsonl(*ROWS))
    first = index.add(read_inputs([path], key_field="id"))
    assert first.added == len(ROWS)
    generation, before = index.store.generation(), stored(index)

    calls = []  # a spy around the real encoder: it still encodes, we only count the calls
    real_encode = index.encoder.encode
    monkeypatch.setattr(index.encoder, "encode", lambda texts: calls.append(list(texts)) or real_encode(texts))
    again = index.add(read_inputs([path], key_field="id"))
    assert (again.added, again.replaced, again.metadata_updated) == (0, 0, 0)
    assert again.unchanged == len(ROWS) and again.skipped == 0 and again.committed == []
    assert [c for c in calls if c] == []  # nothing re-encoded
    assert index.store.generation() == generation
    assert stored(index) == before


def test_changing_only_metadata_updates_it_in_place(index, tmp_path):
    path = write(tmp_path / "items.jsonl", jsonl(*ROWS))
    index.add(read_inputs([path], key_field="id"))
    ids_before = {k: v["id"] for k, v in stored(index).items()}
    vectors_before = index.store.vectors(list(ids_before.values()), index.dim)

    changed = [dict(r) for r in ROWS]
    changed[1]["colour"] = "violet"                   # dog
    changed[4] = {**changed[4], "extra": {"a": 1}}    # river
    write(tmp_path / "items.jsonl", jsonl(*changed))
    report = index.add(read_inputs([path], key_field="id"))
    assert (report.added, report.replaced, report.metadata_updated, report.unchanged) == (0, 0, 2, len(ROWS) - 2)
    assert index.count() == len(ROWS)
    # same items (ids and vectors), new metadata
    assert {k: v["id"] for k, v in stored(index).items()} == ids_before
    assert np.array_equal(index.store.vectors(list(ids_before.values()), index.dim), vectors_before)
    [hit] = search(index, "dog", k=1)
    assert (hit.key, hit.metadata) == ("k1", {"id": "k1", "colour": "violet", "n": 1})
    [hit] = search(index, "river", k=1)
    assert hit.metadata == {"id": "k4", "colour": "blue", "n": 4, "extra": {"a": 1}}
    # and filters see the new metadata
    assert [h.key for h in search(index, "cat", k=10, where="colour = violet")] == ["k1"]
    assert [h.key for h in search(index, "cat", k=10, where="extra.a = 1")] == ["k4"]


def test_shifted_lines_update_line_metadata(index, tmp_path):
    path = write(tmp_path / "in.txt", "cat\ndog\nfish\n")
    index.add(read_inputs([path]))
    ids_before = {k: v["id"] for k, v in stored(index).items()}
    write(tmp_path / "in.txt", "\ncat\ndog\nfish\n")
    report = index.add(read_inputs([path]))
    assert (report.added, report.replaced, report.metadata_updated, report.unchanged) == (0, 0, 3, 0)
    assert {k: v["id"] for k, v in stored(index).items()} == ids_before
    assert search(index, "fish", k=1)[0].metadata == {"source": "in.txt", "line": 4}


def test_changing_the_text_of_a_key_replaces_the_item(index, tmp_path):
    path = write(tmp_path / "items.jsonl", jsonl(*ROWS))
    index.add(read_inputs([path], key_field="id"))
    old_id = stored(index)["k0"]["id"]

    changed = [dict(r) for r in ROWS]
    changed[0]["text"] = "guitar"  # k0 was "cat"
    write(tmp_path / "items.jsonl", jsonl(*changed))
    report = index.add(read_inputs([path], key_field="id"))
    assert (report.added, report.replaced, report.metadata_updated, report.unchanged) == (0, 1, 0, len(ROWS) - 1)
    assert index.count() == len(ROWS)
    items = stored(index)
    new_id = items["k0"]["id"]
    assert new_id != old_id
    assert index.store.fetch([old_id]) == {}
    assert old_id not in index.vectors.ids() and new_id in index.vectors.ids()
    assert items["k0"]["text"] == "guitar"

    [hit] = search(index, "guitar", k=1)
    assert (hit.key, hit.id, hit.text) == ("k0", new_id, "guitar")
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    # nothing holds the old text any more
    assert all(h.text != "cat" and h.id != old_id for h in search(index, "cat", k=len(ROWS)))
    # and the same holds after reopening from disk
    directory = index.directory
    index.close()
    with Index.open(directory) as reopened:
        assert reopened.check()["ok"]
        assert reopened.count() == len(ROWS)
        assert search(reopened, "guitar", k=1)[0].id == new_id
        assert old_id not in reopened.vectors.ids()


# -- keys keep their text; non-finite numbers never reach the store ------------------------------
def test_csv_key_field_keeps_the_cell_text(tmp_path):
    path = write(tmp_path / "k.csv", "id,text\n1.50,cat\n1.5,dog\n1e3,fish\n")
    assert [r.key for r in read_inputs([path], key_field="id")] == ["1.50", "1.5", "1e3"]


@pytest.mark.parametrize("name, body", [
    ("n.jsonl", b'{"text": "cat", "score": NaN}\n{"text": "dog", "score": 2}\n'),
    ("n.csv", b"text,score\ncat,1e999\ndog,2\n"),
])
def test_non_finite_numbers_do_not_break_filters(index, tmp_path, name, body):
    path = write(tmp_path / name, body)
    for item in read_inputs([path]):
        if isinstance(item, Record):
            assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in item.metadata.values())
    index.add(read_inputs([path]))
    assert [h.text for h in search(index, "dog", k=5, where="score >= 2")] == ["dog"]
