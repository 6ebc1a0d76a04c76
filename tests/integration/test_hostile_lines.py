"""One hostile line is one skipped line: lone surrogates in a JSONL text, metadata value,
metadata name or key, JSON nested too deep, and a CSV number of more than 4,300 digits are
each reported with a reason, and every good line around them is stored (issue "Reliability,
round 2", finding 4: each of these aborted the whole add, storing nothing)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import latent
from latent.cli import cli

GOOD = ['{"text": "the first good line", "id": "g1"}', '{"text": "the second good line", "id": "g2"}']
HOSTILE_JSONL = {
    "surrogate in the text": '{"text": "bad \\ud800 text", "id": "h1"}',
    "surrogate in a metadata value": '{"text": "bad value", "id": "h2", "m": "\\udfff"}',
    "surrogate in a metadata name": '{"text": "bad name", "id": "h3", "\\ud800": 1}',
    "surrogate in the key": '{"text": "bad key", "id": "\\ud800"}',
    "900 nested lists": '{"text": "deep", "id": "h5", "m": ' + "[" * 900 + "]" * 900 + "}",
    "5,000 nested lists": '{"text": "deeper", "id": "h6", "m": ' + "[" * 5000 + "]" * 5000 + "}",
}


@pytest.mark.parametrize("name", HOSTILE_JSONL)
def test_hostile_jsonl_line_is_skipped_and_the_rest_stored(tmp_path, name):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([GOOD[0], HOSTILE_JSONL[name], GOOD[1]]) + "\n", encoding="utf-8")
    ix = latent.create(tmp_path / "idx", encoder="glove")
    for key_field in (None, "id"):
        report = ix.add(latent.read_inputs([str(source)], key_field=key_field))
        assert [s.line for s in report.skip_examples()] == [2], report.as_dict()
        assert report.skip_examples()[0].reason
    texts = sorted(row["text"] for row in ix.fetch(ix.ids()).values())
    assert texts == sorted(["the first good line", "the second good line"] * 2)


def test_huge_csv_number_is_a_skipped_line(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("text,n\ngood one,1\nhuge," + "9" * 5000 + "\ngood two,2\n", encoding="utf-8")
    ix = latent.create(tmp_path / "idx", encoder="glove")
    report = ix.add(latent.read_inputs([str(source)]))
    assert [(s.line, s.reason) for s in report.skip_examples()] == [(3, "a number of more than 4,300 digits")]
    assert report.added == 2
    assert {row["metadata"]["n"] for row in ix.fetch(ix.ids()).values()} == {1, 2}


def test_api_items_with_surrogates_are_skipped(tmp_path):
    ix = latent.create(tmp_path / "idx", encoder="glove")
    report = ix.add(["good", "bad \ud800", {"text": "fine", "key": "\udfff"},
                     {"text": "meta", "metadata": {"a": ["\ud800"]}}])
    assert report.added == 1 and [s.line for s in report.skip_examples()] == [2, 3, 4]


def test_cli_add_reports_the_skips_and_exits_0(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([GOOD[0], *HOSTILE_JSONL.values(), GOOD[1]]) + "\n", encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(cli, ["create", str(tmp_path / "idx"), "--encoder", "glove"]).exit_code == 0
    out = runner.invoke(cli, ["add", str(tmp_path / "idx"), str(source), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output[out.output.index("{"):])
    assert report["added"] == 2 and report["skipped"] == len(HOSTILE_JSONL)
