"""The runtimes of the bundled encoders (onnx, the default, or torch) and their ONNX exports:
made once from the torch weights, cached in the cache directory under a key of the source
weights' bytes and the exporter's versions, checked on load, replaced atomically."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

from ..errors import EncoderUnavailable, InputError
from ..paths import cache_dir

RUNTIMES = ("onnx", "torch")
RUNTIME_ENV = "LATENT_RUNTIME"
# Bump when the export code changes what it writes: every cached export is then made again.
RECIPE = "1"
KEY_PROP = "latent_key"  # the model metadata entry that names the key an export was made for


def check_runtime(runtime: str) -> str:
    """`runtime` if it is one of RUNTIMES, else InputError."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime


def default_runtime() -> str:
    """$LATENT_RUNTIME (onnx or torch), else onnx."""
    raw = os.environ.get(RUNTIME_ENV, "").strip().lower()
    if raw and raw not in RUNTIMES:
        raise InputError(f"{RUNTIME_ENV} must be one of {', '.join(RUNTIMES)}, not {raw!r}")
    return raw or RUNTIMES[0]


def package_version(name: str) -> str:
    """An installed distribution's version without importing it ("none" when it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


def exporter_versions() -> str:
    """The versions that shape an export from torch (read from package metadata: no torch import)."""
    return ";".join(f"{p}={package_version(p)}" for p in ("torch", "onnx", "onnxscript")) + f";recipe={RECIPE}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def source_sha256(source: Path, record: dict) -> str:
    """The sha256 of the source weights: the record's when the file is unchanged (same size,
    mtime and inode), else read (a fifth of a second for MiniLM's 90 MB)."""
    known = record.get("source") or {}
    stamp = _stamp(source)
    if known.get("path") == str(source) and all(known.get(k) == v for k, v in stamp.items()) and known.get("sha256"):
        return known["sha256"]
    return file_sha256(source)


def _intact(path: Path, record: dict, key: str) -> bool:
    """Whether `path` is the export the record describes for `key`: the same size, and the same
    sha256 (read only when its mtime or inode changed since it was written)."""
    if record.get("key") != key or record.get("file") != path.name or not path.exists():
        return False
    stamp, known = _stamp(path), record.get("export") or {}
    if stamp["size"] != known.get("size"):
        return False
    if all(known.get(k) == v for k, v in stamp.items()):
        return True
    return file_sha256(path) == known.get("sha256")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One exporting process per model at a time; the others wait, then find its export."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class CachedExport:
    """One model's export in the cache: `path()` gives a checked file, exporting it when needed."""

    def __init__(self, name: str, source: Path, export: Callable[[Path], None], versions: str):
        self.name, self.source, self.export, self.versions = name, Path(source), export, versions
        self.directory = cache_dir() / "onnx"
        self.record_path = self.directory / f"{name}.json"
        self.source_sha = ""

    def key(self, record: dict) -> str:
        """The cache key: a hash of the source's bytes and the versions that made the export."""
        self.source_sha = source_sha256(self.source, record)
        text = "\n".join([self.name, self.source_sha, self.versions])
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def path(self, *, force: bool = False) -> tuple[Path, str]:
        """(the export's path, its key); exported first when missing, stale, damaged or `force`d."""
        if not self.source.exists():
            raise EncoderUnavailable(f"the weights {self.source} are missing; reinstall the package that ships them")
        record = _read_record(self.record_path)
        key = self.key(record)
        path = self.directory / f"{self.name}-{key}.onnx"
        if not force and _intact(path, record, key):
            return path, key
        self.directory.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.directory / f"{self.name}.lock"):
            record = _read_record(self.record_path)
            if not force and _intact(path, record, key):  # another process exported it meanwhile
                return path, key
            self._export(path, key)
        return path, key

    def _export(self, path: Path, key: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.export(tmp)
            _label(tmp, key)
            sha = file_sha256(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        source = {"path": str(self.source), **_stamp(self.source), "sha256": self.source_sha}
        _write_atomically(self.record_path, json.dumps({
            "key": key, "file": path.name, "versions": self.versions, "source": source,
            "export": {**_stamp(path), "sha256": sha},
        }, indent=1))
        for old in self.directory.glob(f"{self.name}-*.onnx"):  # earlier keys' exports
            if old != path:
                old.unlink(missing_ok=True)


def _label(path: Path, key: str) -> None:
    """Write the key into the model's metadata, where a loaded session can read it back."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.add(key=KEY_PROP, value=key)
    onnx.save(model, str(path))


def threads() -> int:
    """Intra-op threads: the CPUs this process may run on (OMP_NUM_THREADS when set)."""
    raw = os.environ.get("OMP_NUM_THREADS", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def session(cached: CachedExport):
    """An onnxruntime session of the cached export; a file that onnxruntime cannot read, or
    whose metadata names another key, is exported again once."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - part of the install
        raise EncoderUnavailable(f"the onnx runtime needs onnxruntime ({e}); install it, or use the torch runtime") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for attempt in range(2):
        path, key = cached.path(force=attempt > 0)
        try:
            made = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:  # damaged in a way the checks above missed: export again
            if attempt:
                raise
            continue
        if made.get_modelmeta().custom_metadata_map.get(KEY_PROP) == key:
            return made
    raise EncoderUnavailable(f"the ONNX export of {cached.name} in {cached.directory} does not load; "
                             "delete that folder and try again")
