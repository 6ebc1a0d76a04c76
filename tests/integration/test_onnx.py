"""The onnx runtime of the bundled encoders: the same vectors as torch, the export cache (first
use exports, later uses load, a changed key or a damaged file exports again, two processes
export once), the runtime recorded at create, and queries that never import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import latent
from latent.indexer.builtin import SENTENCES
from latent.indexer.encoders import encoder_spec, get_encoder
from latent.indexer.encoders import runtime as rt
from latent.indexer.errors import InputError

HEAVY = ("torch", "transformers", "sentence_transformers", "timm")


def _texts() -> list[str]:
    return [json.loads(line)["text"] for line in Path(SENTENCES).read_text().splitlines() if line.strip()]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# -- the same vectors as torch -----------------------------------------------------------------------------
def test_minilm_onnx_equals_torch_on_the_bundled_sentences():
    texts = _texts()
    assert len(texts) == 400
    onnx, torch = get_encoder("minilm", "onnx"), get_encoder("minilm", "torch")
    assert (onnx.runtime, torch.runtime) == ("onnx", "torch")
    assert _cosines(onnx.encode(texts), torch.encode(texts)).min() >= 0.99999
    edge = ["", "a", "word " * 600, "émigré naïve café — 日本語"]  # empty, one letter, truncated, not ASCII
    assert _cosines(onnx.encode(edge), torch.encode(edge)).min() >= 0.99999


def test_efficientnet_and_conse_onnx_equal_torch_on_real_photos():
    from PIL import Image

    skdata = pytest.importorskip("skimage.data")
    photos = [Image.fromarray(getattr(skdata, n)()) for n in ("chelsea", "coffee", "rocket", "astronaut", "camera")]
    photos.append(Image.fromarray(skdata.stereo_motorcycle()[0]))
    for name in ("efficientnet", "conse"):
        onnx, torch = get_encoder(name, "onnx"), get_encoder(name, "torch")
        (a, meta_a), (b, meta_b) = onnx.encode_images(photos), torch.encode_images(photos)
        assert _cosines(a, b).min() >= 0.99999, name
        assert [m["label"] for m in meta_a] == [m["label"] for m in meta_b]
    batch = np.stack([onnx.preprocess(p) for p in photos])
    _, logits_a = get_encoder("efficientnet", "onnx").forward(batch)
    _, logits_b = get_encoder("efficientnet", "torch").forward(batch)
    np.testing.assert_allclose(logits_a, logits_b, atol=1e-3)


# -- the runtime: chosen at create, recorded, used by queries ----------------------------------------------
def test_runtime_is_recorded_at_create_and_used_by_queries(tmp_path, monkeypatch):
    with latent.create(tmp_path / "t", runtime="torch") as index:
        assert index.manifest["runtime"] == "torch" and index.info()["runtime"] == "torch"
        assert index._encoder is None  # creating does not load the model
    with latent.open(tmp_path / "t") as index:
        assert index.encoder is get_encoder("minilm", "torch")
    monkeypatch.setenv("LATENT_RUNTIME", "torch")
    with latent.create(tmp_path / "env") as index:
        assert index.manifest["runtime"] == "torch"
    monkeypatch.setenv("LATENT_RUNTIME", "onnx")
    with latent.open(tmp_path / "t") as index:  # the recorded runtime wins over the environment
        assert index.encoder.runtime == "torch"
    with latent.create(tmp_path / "o") as index:
        assert index.manifest["runtime"] == "onnx"
    with latent.create(tmp_path / "g", encoder="glove") as index:
        assert index.manifest["runtime"] is None  # one way to run: nothing to record
    monkeypatch.setenv("LATENT_RUNTIME", "jax")
    with pytest.raises(InputError, match="LATENT_RUNTIME must be one of onnx, torch"):
        encoder_spec("minilm")
    with pytest.raises(InputError, match="unknown runtime 'tf'"):
        encoder_spec("minilm", "tf")


def test_spec_matches_the_loaded_encoder():
    for name in ("minilm", "efficientnet", "conse"):
        assert encoder_spec(name, "onnx") == get_encoder(name, "onnx").to_spec()
        assert encoder_spec(name, "torch") == get_encoder(name, "torch").to_spec()


def _run(code: str, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "LATENT_RUNTIME": ""}, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_queries_never_import_torch(tmp_path):
    texts = _texts()[:40]
    with latent.create(tmp_path / "ix") as index:
        index.add(texts)
    get_encoder("minilm", "onnx")  # exported in this session's cache directory
    through_api = _run(f"""
        import json, sys
        import latent
        hits = latent.open({str(tmp_path / 'ix')!r}).search("stars and planets", k=3)
        print(json.dumps({{"hits": len(hits), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """, tmp_path)
    assert through_api == {"hits": 3, "heavy": []}
    through_cli = _run(f"""
        import json, sys
        from latent.cli import cli
        try:
            cli(["search", {str(tmp_path / 'ix')!r}, "stars and planets", "-k", "3"], prog_name="latent")
        except SystemExit as e:  # main() ends with os._exit: run its command group
            code = e.code
        print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """, tmp_path)
    assert through_cli == {"code": 0, "heavy": []}


# -- the export cache ----------------------------------------------------------------------------------------
def _tiny_export(calls: list):
    """An export function writing a one-node ONNX model (y = x + 1), counting its calls."""
    def export(target: Path) -> None:
        import onnx
        from onnx import TensorProto, helper

        calls.append(target)
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "one"], ["y"])], "tiny",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
            [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(target))
    return export


def _answer(session) -> float:
    return float(session.run(None, {"x": np.zeros(1, dtype=np.float32)})[0][0])


def test_export_cache_exports_once_then_loads_and_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENT_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "weights.bin"
    source.write_bytes(b"weights v1")
    calls: list = []
    cached = rt.CachedExport("tiny", source, _tiny_export(calls), "v1")
    assert _answer(rt.session(cached)) == 1.0 and len(calls) == 1  # first use exports
    path, key = cached.path()
    assert _answer(rt.session(cached)) == 1.0 and len(calls) == 1  # then loads
    record = json.loads((path.parent / "tiny.json").read_text())
    assert record["key"] == key and record["export"]["sha256"] == rt.file_sha256(path)

    # a changed key (other source bytes, other versions) exports again, and the old file goes
    monkeypatch.setattr(rt, "source_sha256", lambda source, record: "another hash")
    new_path, new_key = cached.path()
    assert new_key != key and len(calls) == 2 and new_path.exists() and not path.exists()
    monkeypatch.undo()
    monkeypatch.setenv("LATENT_CACHE_DIR", str(tmp_path / "cache"))
    rt.session(rt.CachedExport("tiny", source, _tiny_export(calls), "v2"))
    assert len(calls) == 3

    # a damaged file, same size: the changed mtime makes the load hash it, and the hash differs
    cached = rt.CachedExport("tiny", source, _tiny_export(calls), "v2")
    path, key = cached.path()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert _answer(rt.session(cached)) == 1.0 and len(calls) == 4
    path.write_bytes(b"not onnx")  # truncated
    assert _answer(rt.session(cached)) == 1.0 and len(calls) == 5
    assert not list(path.parent.glob(".*.tmp"))  # no temporary files left

    # a file whose metadata names another key (moved in, its record rewritten to match) is exported again
    other_path, _ = rt.CachedExport("tiny", source, _tiny_export(calls), "v3").path()
    assert len(calls) == 6
    os.replace(other_path, path)
    record_path = path.parent / "tiny.json"
    record = json.loads(record_path.read_text())
    record.update(key=key, file=path.name, export={**record["export"], **rt._stamp(path)})
    record_path.write_text(json.dumps(record))
    assert _answer(rt.session(cached)) == 1.0 and len(calls) == 7


def test_two_processes_exporting_at_once_export_once(tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(b"weights")
    log = tmp_path / "exports.log"
    code = f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        os.environ["LATENT_CACHE_DIR"] = {str(tmp_path / 'cache')!r}
        from pathlib import Path
        from latent.indexer.encoders import runtime as rt
        from test_onnx import _answer, _tiny_export

        class Logged(list):
            def append(self, item):
                with open({str(log)!r}, "a") as f:
                    f.write(str(os.getpid()) + "\\n")
                time.sleep(1.0)  # a slow export: the other process arrives meanwhile

        session = rt.session(rt.CachedExport("tiny", Path({str(source)!r}), _tiny_export(Logged()), "v1"))
        print('{{"answer": %s}}' % _answer(session))
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert [json.loads(out.strip().splitlines()[-1]) for out, _ in outs] == [{"answer": 1.0}] * 2
    assert len(log.read_text().split()) == 1


def test_cli_create_takes_the_runtime_and_loads_no_model(tmp_path):
    from click.testing import CliRunner

    from latent.cli import cli

    done = CliRunner().invoke(cli, ["create", str(tmp_path / "t"), "--runtime", "torch", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["runtime"] == "torch"
    done = CliRunner().invoke(cli, ["create", str(tmp_path / "x"), "--runtime", "tf"])
    assert done.exit_code == 2 and "'tf' is not one of 'onnx', 'torch'" in done.output
    created = _run(f"""
        import json, sys
        from latent.cli import cli
        try:
            cli(["create", {str(tmp_path / 'o')!r}, "-e", "conse"], prog_name="latent")
        except SystemExit as e:
            code = e.code
        print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules],
                          "onnxruntime": "onnxruntime" in sys.modules}}))
    """, tmp_path)
    assert created == {"code": 0, "heavy": [], "onnxruntime": False}
