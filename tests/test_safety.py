"""No unsafe deserialisation anywhere in the project's own code: no pickle loads, no
torch.load without weights_only=True, no allow_pickle=True."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("indexer", "search", "benchmarks") for p in (ROOT / folder).rglob("*.py")] + \
    [ROOT / "cli.py"]


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
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for bad in ("pickle.load(", "pickle.loads(", "cPickle", "dill.load", "joblib.load(", "allow_pickle=True"):
            if bad in code:
                problems.append(f"{path.relative_to(ROOT)}: {bad}")
        for call in calls(code, "torch.load"):
            if "weights_only=True" not in call:
                problems.append(f"{path.relative_to(ROOT)}: {call[:80]}")
    assert problems == []


def test_the_checker_catches_what_it_looks_for():
    sample = 'x = torch.load(path, map_location="cpu")\ny = torch.load(p, weights_only=True)\n'
    assert [c for c in calls(sample, "torch.load") if "weights_only=True" not in c] == \
        ['torch.load(path, map_location="cpu")']
