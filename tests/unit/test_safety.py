"""No unsafe deserialisation anywhere in the project's own code (the package, the CLI,
the benchmarks and the tests): no pickle/marshal/shelve/dill/joblib loads, no yaml.load
without a safe loader, no torch.load without weights_only=True, no allow_pickle=True.
(Crafted checkpoints with a __reduce__ payload are tried in test_generative.py and
test_clip.py: refused, and the payload never runs.)"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for folder in ("indexer", "search", "generative", "benchmarks", "tests") for p in (ROOT / folder).rglob("*.py")
           if p.name != "test_safety.py"] + [ROOT / "cli.py"]
UNSAFE = ("pickle.load(", "pickle.loads(", "pickle.Unpickler", "cPickle", "marshal.load", "shelve.open",
          "dill.load", "joblib.load(", "allow_pickle=True", "read_pickle(", "torch.jit.load(")


def calls(text: str, name: str):
    """The full text of each call `name(...)` in `text` (parentheses balanced)."""
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield text[m.start():i]


def test_sources_were_found():
    assert len(SOURCES) > 20 and all(p.exists() for p in SOURCES)


def test_no_unsafe_deserialisation():
    problems = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        code = "\n".join(line for line in text.splitlines()  # comments, and lines marked as deliberate
                          if not line.lstrip().startswith("#") and "# unsafe-on-purpose:" not in line)
        for bad in UNSAFE:
            if bad in code:
                problems.append(f"{path.relative_to(ROOT)}: {bad}")
        for call in calls(code, "yaml.load"):
            if "SafeLoader" not in call:
                problems.append(f"{path.relative_to(ROOT)}: {call[:80]}")
        for call in calls(code, "torch.load"):
            if "weights_only=True" not in call:
                problems.append(f"{path.relative_to(ROOT)}: {call[:80]}")
    assert problems == []


def test_the_checker_catches_what_it_looks_for():
    sample = 'x = torch.load(path, map_location="cpu")\ny = torch.load(p, weights_only=True)\n'
    assert [c for c in calls(sample, "torch.load") if "weights_only=True" not in c] == \
        ['torch.load(path, map_location="cpu")']
