"""Every offered row is stored or reported with a reason (issue "Reliability, round 2",
finding 3): rows of one input with the same text (no key) or the same key are reported, not
merged; key values are typed strictly; the same holds within a batch and across batches."""

from __future__ import annotations

import pytest

import latent

SAME_TEXT = ['{"text": "same", "year": 1}', '{"text": "same", "year": 2}', '{"text": "other"}']
TYPED_KEYS = ['{"id": 1, "text": "a"}', '{"id": "1", "text": "b"}', '{"id": true, "text": "c"}',
              '{"id": 1.0, "text": "d"}', '{"id": "x", "text": "e"}', '{"id": "x", "text": "f"}']


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _accounted(report) -> int:
    return report.added + report.replaced + report.metadata_updated + report.unchanged + report.skipped


@pytest.mark.parametrize("batch_size", [1, 64])
def test_same_text_without_key_is_reported(tmp_path, batch_size):
    source = _write(tmp_path / "in.jsonl", SAME_TEXT)
    ix = latent.create(tmp_path / "idx", encoder="glove")
    for run in range(2):  # a fresh index, then the same file again (its rows are then unchanged)
        report = ix.add(latent.read_inputs([source]), batch_size=batch_size)
        assert _accounted(report) == 3
        assert [s.line for s in report.skip_examples()] == [2]
        assert report.skip_examples()[0].reason.startswith("the same text as line 1 of this input")
        assert ix.count() == 2
        year = [row["metadata"] for row in ix.fetch(ix.ids()).values() if row["text"] == "same"]
        assert year == [{"year": 1}]  # the first row's metadata, never silently replaced by the second


@pytest.mark.parametrize("batch_size", [1, 64])
def test_keys_are_typed_strictly_and_duplicates_reported(tmp_path, batch_size):
    source = _write(tmp_path / "in.jsonl", TYPED_KEYS)
    ix = latent.create(tmp_path / "idx", encoder="glove")
    for run in range(2):
        report = ix.add(latent.read_inputs([source], key_field="id"), batch_size=batch_size)
        assert _accounted(report) == 6
        reasons = {s.line: s.reason for s in report.skip_examples()}
        assert sorted(reasons) == [2, 3, 4, 6]
        assert reasons[2].startswith("duplicate key '1': line 1")
        assert "boolean" in reasons[3] and "not text or a whole number" in reasons[4]
        assert reasons[6].startswith("duplicate key 'x': line 5")
        texts = {row["key"]: row["text"] for row in ix.fetch(ix.ids()).values()}
        assert texts == {"1": "a", "x": "e"}


def test_duplicates_across_inputs_name_the_first_file(tmp_path):
    first = _write(tmp_path / "a.jsonl", ['{"id": "k", "text": "king"}'])
    second = _write(tmp_path / "b.jsonl", ['{"id": "k", "text": "queen"}'])
    ix = latent.create(tmp_path / "idx", encoder="glove")
    report = ix.add(latent.read_inputs([first, second], key_field="id"), batch_size=1)
    assert report.added == 1 and [s.reason for s in report.skip_examples()] == [f"duplicate key 'k': {first}:1 of this "
                                                                         "input has it, and the first row is kept"]


def test_api_duplicates_are_reported(tmp_path):
    ix = latent.create(tmp_path / "idx", encoder="glove")
    report = ix.add(["king", "king", {"text": "queen", "key": "q"}, {"text": "prince", "key": "q"}])
    assert report.added == 2 and [s.line for s in report.skip_examples()] == [2, 4]


def test_a_row_the_encoder_refused_does_not_claim_its_key(tmp_path):
    source = _write(tmp_path / "in.jsonl", ['{"id": "k", "text": "qwxzvvq"}', '{"id": "k", "text": "king"}'])
    ix = latent.create(tmp_path / "idx", encoder="glove")
    report = ix.add(latent.read_inputs([source], key_field="id"), batch_size=1)
    assert report.added == 1 and "vocabulary" in report.skip_examples()[0].reason
    assert [row["text"] for row in ix.fetch(ix.ids()).values()] == ["king"]
