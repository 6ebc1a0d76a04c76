"""The `latent` command through click's CliRunner: outputs, --json shapes, exit codes."""

import inspect
import json
import re

from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from latent.cli import cli
from latent.commands.common import Flags, flags
from latent.indexer.errors import IndexNotFound


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(cli, [str(a) for a in args], input=input)

    return invoke


@pytest.fixture
def notes(tmp_path, run, sentences):
    """An index created and filled through the CLI from a JSONL file of 60 sentences."""
    src = tmp_path / "notes.jsonl"
    src.write_text("".join(json.dumps({"id": s["id"], "topic": s["topic"], "year": 1990 + i % 30, "text": s["text"]})
                           + "\n" for i, s in enumerate(sentences[180:240])))
    directory = tmp_path / "notes"
    result = run("create", directory, "--encoder", "minilm", "--index", "flat")
    assert result.exit_code == 0, result.output
    assert "minilm (384-d)" in result.output
    result = run("add", directory, src, "--key-field", "id")
    assert result.exit_code == 0, result.output
    assert "Added 60" in result.output
    return directory


def test_search_json_shape(run, notes):
    result = run("search", notes, "a dog on the beach", "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["query"] == "a dog on the beach"
    assert [h["rank"] for h in doc["hits"]] == [1, 2, 3]
    for hit in doc["hits"]:
        assert set(hit) >= {"rank", "key", "score", "metadata"}
        assert isinstance(hit["score"], float) and hit["metadata"]["topic"]
    assert doc["hits"][0]["metadata"]["topic"] == "animals"


def test_search_table_and_filter(run, notes):
    result = run("search", notes, "rain and storms", "-k", "4", "--where", "topic=weather and year>=1990")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split()[:3] == ["rank", "score", "key"]
    assert len(lines) == 2 + 4 and all("weather" in line for line in lines[2:])
    empty = run("search", notes, "rain", "--where", "topic=nothing")
    assert empty.exit_code == 0 and "(no hits)" in empty.output


def test_similar_by_key_and_vector(run, notes, tmp_path):
    result = run("similar", notes, "--key", "s0202", "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    keys = [h["key"] for h in json.loads(result.output)["hits"]]
    assert len(keys) == 2 and "s0202" not in keys
    from latent.indexer import Index

    with Index.open(notes) as index:
        np.save(tmp_path / "v.npy", index.store.vector_of_key("s0202", 384))
    result = run("similar", notes, "--vector", tmp_path / "v.npy", "-k", "1", "--json")
    assert json.loads(result.output)["hits"][0]["key"] == "s0202"
    np.save(tmp_path / "bad.npy", np.ones(50, dtype=np.float32))
    bad = run("similar", notes, "--vector", tmp_path / "bad.npy")
    assert bad.exit_code == 1 and "384" in bad.output
    assert run("similar", notes).exit_code == 2  # usage: none of --key, --vector, --image


def test_info_check_delete_rebuild(run, notes):
    info = json.loads(run("info", notes, "--json").output)
    assert info["count"] == 60 and info["encoder"] == "minilm" and info["dim"] == 384
    assert info["metric"] == "ip" and info["faiss_factory"] == "Flat" and info["size_bytes"] > 0
    generation = info["generation"]
    result = run("delete", notes, "s0201", "s0202", "missing-key")
    assert result.exit_code == 0 and "Deleted 2" in result.output and "missing-key" in result.output
    assert json.loads(run("info", notes, "--json").output)["count"] == 58
    assert json.loads(run("info", notes, "--json").output)["generation"] == generation + 1
    check = run("check", notes)
    assert check.exit_code == 0 and check.output.startswith("OK: 58 items")
    (notes / "vectors.faiss").unlink()
    broken = run("check", notes)
    assert broken.exit_code == 1 and "missing" in broken.output
    rebuilt = run("rebuild", notes)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert run("check", notes).exit_code == 0
    keys = [h["key"] for h in json.loads(run("search", notes, "dog", "-k", "58", "--json").output)["hits"]]
    assert len(keys) == 58 and "s0202" not in keys


def test_add_reports_bad_lines_and_keeps_the_rest(run, notes, tmp_path):
    src = tmp_path / "more.jsonl"
    src.write_bytes(b'{"id": "n1", "text": "Glaciers carve deep valleys into mountains."}\n'
                    b'{"id": "n2", "text": \n'
                    b'{"id": "n3", "body": "no text field"}\n'
                    b'{"id": "n4", "text": "   "}\n'
                    b'{"id": "n5", "text": "caf\xe9 latin-1 bytes"}\n'
                    b'{"id": "n6", "text": "Volcanoes release ash and lava when they erupt."}\n')
    result = run("add", notes, src, "--key-field", "id")
    assert result.exit_code == 0, result.output
    assert "Added 2" in result.output and "skipped 4" in result.output
    for line in (2, 3, 4, 5):
        assert f"more.jsonl:{line}:" in result.output
    assert json.loads(run("info", notes, "--json").output)["count"] == 62
    hits = json.loads(run("search", notes, "volcano eruption", "-k", "1", "--json").output)["hits"]
    assert hits[0]["key"] == "n6"


def test_errors_are_one_line_with_exit_codes(run, tmp_path, notes):
    missing = run("search", tmp_path / "nowhere", "x")
    assert missing.exit_code == 1
    assert missing.output.count("\n") == 1 and missing.output.startswith("Error: no latent index")
    bad_filter = run("search", notes, "x", "--where", "year>=")
    assert bad_filter.exit_code == 1 and "position" in bad_filter.output
    assert "Traceback" not in bad_filter.output
    exists = run("create", notes)
    assert exists.exit_code == 1 and "already holds an index" in exists.output
    bad_encoder = run("create", tmp_path / "x", "--encoder", "nope")
    assert bad_encoder.exit_code == 1 and "unknown encoder" in bad_encoder.output
    bad_index = run("create", tmp_path / "y", "--encoder", "glove", "--index", "NotAFactory")
    assert bad_index.exit_code == 1 and "invalid index type" in bad_index.output
    mismatch = run("add", notes, tmp_path / "notes.jsonl", "--encoder", "glove")
    assert mismatch.exit_code == 1 and "minilm" in mismatch.output and "glove" in mismatch.output
    assert run("add", notes, tmp_path / "no-such-file.txt").exit_code == 1
    assert run("search", notes).exit_code == 2  # usage error: missing QUERY
    assert run("search", notes, "x", "-k", "0").exit_code == 2


def test_words_toilet_bathroom(run):
    result = run("words", "toilet", "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    keys = [h["key"] for h in json.loads(result.stdout)["hits"]]
    assert "bathroom" in keys and "toilet" not in keys and len(keys) == 5
    table = run("words", "Paris", "-k", "3")
    assert "france" in table.output
    oov = run("words", "qwzxvbn")
    assert oov.exit_code == 1 and "qwzxvbn" in oov.output


def test_lines_and_stdin(run, tmp_path):
    directory = tmp_path / "w"
    assert run("create", directory, "--encoder", "glove").exit_code == 0
    result = run("add", directory, "-", "--format", "words", input="apple\nbanana\n\ncherry\nzzqqxx\n")
    assert result.exit_code == 0, result.output
    assert "Added 3" in result.output and "skipped 1" in result.output and "zzqqxx" in result.output
    hits = json.loads(run("search", directory, "fruit", "-k", "3", "--json").output)["hits"]
    assert {h["key"] for h in hits} == {"apple", "banana", "cherry"}


def all_commands(group=cli, path=()):
    """(path, command) for the group and every command under it, the plugins' included."""
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_help_texts_have_examples(run):
    commands = [[c] for c in ["create", "add", "search", "similar", "delete", "info", "check", "rebuild", "words",
                              "demo", "encoders", "analogy", "interpolate", "map"]]
    commands += [["vae", c] for c in ("train", "encode", "interpolate", "sample")]
    commands += [["gan", c] for c in ("train", "sample", "interpolate", "direction")]
    for command in commands:
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Example:" in result.output, command
    for path, command in all_commands():  # every docstring ends with its examples
        assert inspect.cleandoc(command.help).rsplit("\n\n", 1)[-1].startswith("\b\nExample:\n    latent "), path
        assert run(*path, "--help").exit_code == 0, path


def placeholders(command: click.Command) -> list[str]:
    """Values for the required arguments and options of `command`, enough to parse it."""
    args = []
    for param in command.params:
        if param.required:
            args += ["x.png"] if isinstance(param, click.Argument) else [param.opts[0], "x.png"]
    return args


def parse(path: tuple, command: click.Command, args: list[str]) -> click.Context:
    """Parse `latent *path *args` for `command`, under fresh contexts of the groups above it."""
    if not path:
        return cli.make_context("latent", args)
    group = cli
    parent = click.Context(cli, info_name="latent")
    for name in path[:-1]:
        group = group.commands[name]
        parent = click.Context(group, info_name=name, parent=parent)
    return command.make_context(path[-1], args, parent=parent)


def test_quiet_json_debug_are_accepted_after_the_arguments_of_every_command():
    paths = []
    for path, command in all_commands():
        for given in (["-q", "--json", "--debug"], ["--quiet"]):
            ctx = parse(path, command, [*placeholders(command), *given])
            assert flags(ctx) == Flags(quiet=True, json=len(given) > 1, debug=len(given) > 1), (path, given)
        paths.append(path)
    assert {("add",), ("serve",), ("vae", "train"), ("gan", "direction")} <= set(paths)
    # before the command, on the group, as before
    ctx = cli.make_context("latent", ["-q", "--json", "info", "x"])
    assert flags(ctx) == Flags(quiet=True, json=True, debug=False)


def test_help_lists_the_plugin_commands(run):
    result = run("--help")
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert {"vae", "gan", "search", "map", "serve"} <= listed
    assert cli.commands["vae"].callback.__module__ == "latent.generative.cli"  # registered by the plugin


def test_the_cli_module_only_assembles_the_group():
    import latent.cli

    source = Path(latent.cli.__file__).read_text()
    assert len(source.splitlines()) < 100 and "generative" not in source
    for path, command in all_commands():
        if path:
            assert command.callback.__module__.startswith(("latent.commands.", "latent.generative.")), path


def test_json_quiet_and_debug_after_the_arguments(run, notes, tmp_path, monkeypatch):
    quiet = run("add", notes, tmp_path / "notes.jsonl", "--key-field", "id", "--quiet")
    assert quiet.exit_code == 0 and "unchanged 60" in quiet.output
    created = run("create", tmp_path / "new", "--encoder", "glove", "--json")
    assert created.exit_code == 0 and json.loads(created.output)["encoder"] == "glove"
    deleted = run("delete", notes, "s0190", "nope", "--json")
    assert json.loads(deleted.output) == {"deleted": 1, "missing": ["nope"], "count": 59}
    rebuilt = json.loads(run("rebuild", notes, "--json").output)
    assert rebuilt["repaired"] == [] and rebuilt["count"] == 59 and rebuilt["faiss_factory"] == "Flat"
    names = [e["name"] for e in json.loads(run("encoders", "--json").output)["encoders"]]
    assert {"minilm", "glove", "vae:<model file>"} <= set(names)
    monkeypatch.setattr("latent.search.server.serve", lambda dirs, announce, **kw: announce(f"Serving {dirs}"))
    served = run("serve", notes, "--json")
    assert served.exit_code == 0 and json.loads(served.output) == {"message": f"Serving {[str(notes)]}"}
    debug = run("search", tmp_path / "nowhere", "x", "--debug")  # the exception itself, not one line
    assert debug.exit_code == 1 and isinstance(debug.exception, IndexNotFound) and "Error:" not in debug.output


def test_add_summarises_many_skips_per_reason_with_examples(run, notes, tmp_path):
    """Finding 7 of "Reliability, round 2": counts per reason, then at most 20 examples of each
    in line order; --json gives the same counts and examples."""
    src = tmp_path / "bad.jsonl"
    src.write_text("".join("oops\n" if n % 2 else json.dumps({"id": f"b{n}", "body": "x"}) + "\n"
                           for n in range(1, 61)))
    result = run("add", notes, src, "--key-field", "id")
    assert result.exit_code == 0, result.output
    assert "Added 0" in result.output and "skipped 60" in result.output
    lines = result.output.splitlines()
    start = lines.index("Skipped 60 input(s):")
    assert lines[start + 1:start + 3] == ["         30  malformed JSON (Expecting value at column 1)",
                                          "         30  no field 'text' (text_field chooses the text column)"]
    shown = [int(m.group(1)) for m in map(re.compile(r"  .*bad\.jsonl:(\d+): ").match, lines) if m]
    assert shown == list(range(1, 41))  # the first 20 of each reason, in line order
    report = json.loads(run("add", notes, src, "--key-field", "id", "--json").output)
    assert report["skipped"] == 60 and report["skip_reasons"] == {
        "malformed JSON (Expecting value at column 1)": 30, "no field 'text' (text_field chooses the text column)": 30}
    assert [s["line"] for s in report["skipped_lines"]] == list(range(1, 41))
    assert json.loads(run("info", notes, "--json").output)["skipped_inputs"] == 60  # recorded once


def test_images_through_the_cli(run, tmp_path):
    from latent.indexer.builtin import write_demo_photos

    photos = write_demo_photos(tmp_path / "photos")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    directory = tmp_path / "pics"
    assert run("create", directory, "--encoder", "conse").exit_code == 0
    added = run("add", directory, photos, "--json")  # a folder: images, found recursively
    assert added.exit_code == 0, added.output
    report = json.loads(added.output)
    assert report["skipped"] == 1 and report["skipped_lines"][0]["reason"].startswith("corrupt or truncated")
    assert report["added"] == report["count"] >= 20
    text = json.loads(run("search", directory, "a cup of coffee", "-k", "1", "--json").output)
    assert text["hits"][0]["key"] == "coffee.png" and text["hits"][0]["kind"] == "image"
    table = run("similar", directory, "--image", photos / "faces" / "face-00.png", "-k", "3")
    assert table.exit_code == 0 and table.output.splitlines()[0].split() == ["rank", "score", "key", "label"]
    assert all("faces/" in line for line in table.output.splitlines()[2:])
    filtered = json.loads(run("search", directory, "a photo", "--where", "label=espresso", "--json").output)
    assert [h["key"] for h in filtered["hits"]] == ["coffee.png"]


def test_text_query_on_an_image_only_index_names_the_encoders(run, tmp_path):
    from PIL import Image
    import skimage.data

    Image.fromarray(skimage.data.rocket()).save(tmp_path / "rocket.png")
    directory = tmp_path / "cnn"
    assert run("create", directory, "--encoder", "efficientnet").exit_code == 0
    assert run("add", directory, tmp_path / "rocket.png").exit_code == 0
    result = run("search", directory, "a rocket")
    assert result.exit_code == 1 and "not text" in result.output and "conse" in result.output
    assert json.loads(run("similar", directory, "--image", tmp_path / "rocket.png", "--json").output)["hits"] == []
    by_image = json.loads(run("similar", directory, "--image", tmp_path / "rocket.png", "--json",
                              "--include-self").output)
    assert by_image["hits"][0]["key"] == "rocket.png"
    assert by_image["hits"][0]["metadata"]["label"] in ("missile", "projectile", "space shuttle")
