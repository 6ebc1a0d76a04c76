"""Hostile input files, end to end through the real CLI: one generated corpus of good and bad
files (empty, truncated, pixel and GIF bombs, wrong extensions, invalid UTF-8, a 100 MB line,
a symlink loop, a FIFO, an unreadable file), added with `latent add --json` as an image folder
(efficientnet) and as text files (minilm). Each bad file must be skipped with its reason, the
good items all added, nothing stored for a bad file, and the memory of `latent add` bounded.

Memory is what the `latent add` process allocates: its anonymous RSS (RssAnon), polled from
/proc every 50 ms. It must stay under 1 GiB, and within HEADROOM of `latent create` with the
same encoder (which loads the encoder and reads no input). A 100 MB line held whole, or the
81 M pixel GIF converted to RGB at full size, would add far more. The peak total RSS (VmHWM;
ru_maxrss from os.wait4 would also count the forked copy of pytest that started the command)
is printed too: it adds the pages of shared libraries, mostly torch's, which vary with the
page cache (775-991 MiB for the same `latent create`).

Tests may run as root, for whom chmod 000 does not stop reading: then every `latent` command
runs with the capabilities that let root ignore file permissions (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH) dropped from its bounding set, which makes the file unreadable for it
as for anyone. Where that cannot be done (and a probe says so), the unreadable file is
expected to be read like a good image, and only that file's assertions change.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

from conftest import png_bomb

skdata = pytest.importorskip("skimage.data")

LATENT = str(Path(sys.executable).with_name("latent"))
MIB = 1 << 20
GIB = 1 << 30
HEADROOM = 128 * MIB
LONG_LINE = 100 * MIB
TIMEOUT_S = 180
RSS_KILL = 3 * GIB

# A Python prologue that drops CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from the
# bounding set (prctl PR_CAPBSET_DROP = 24) and then execs the command, same pid: a root
# process exec'd without them in its bounding set does not get them back.
_DROP_DAC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):
    if libc.prctl(24, cap, 0, 0, 0) != 0:
        sys.exit(f"cannot drop capability {cap}: errno {ctypes.get_errno()}")
os.execv(sys.argv[1], sys.argv[1:])
"""


# -- running latent ------------------------------------------------------------------------------
class Run:
    """A command started now; `wait()` gives its exit status, output and own peak RSS. A
    watchdog kills it when it runs past TIMEOUT_S or its RSS passes RSS_KILL, so that a hang
    or a runaway fails the test instead of stalling or swamping the machine."""

    def __init__(self, args: list[str], unprivileged: bool):
        argv = [sys.executable, "-c", _DROP_DAC, *args] if unprivileged else list(args)
        env = {k: v for k, v in os.environ.items() if k != "LATENT_MAX_IMAGE_PIXELS"}
        self.args = args
        self.killed: str | None = None
        self.hwm = 0  # the peak RSS seen by the watchdog (VmHWM)
        self.anon = 0  # the largest anonymous RSS it saw (RssAnon)
        self._out, self._err = io.BytesIO(), io.BytesIO()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self._done = threading.Event()
        self._threads = [threading.Thread(target=lambda s=s, b=b: b.write(s.read()), daemon=True)
                         for s, b in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        self._threads.append(threading.Thread(target=self._watch, daemon=True))
        for t in self._threads:
            t.start()

    def _watch(self) -> None:
        """Polls /proc: VmHWM is the peak RSS of the process image the command runs in (it starts
        afresh at exec; ru_maxrss would also count the copy of pytest that was forked to start it)."""
        status = Path(f"/proc/{self.proc.pid}/status")
        while not self._done.wait(0.05):
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                rss, hwm, anon = (int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM", "RssAnon"))
            except (OSError, KeyError, ValueError):
                continue  # exiting, or a zombie waiting to be reaped
            self.hwm, self.anon = max(self.hwm, hwm), max(self.anon, anon)
            if time.monotonic() - self.started > TIMEOUT_S or rss > RSS_KILL:
                self.killed = f"over {TIMEOUT_S} s" if rss <= RSS_KILL else f"RSS {rss / MIB:.0f} MiB"
                self.proc.kill()
                return

    def wait(self) -> Run:
        """Wait for the process itself: its exit status and its own peak RSS (the largest VmHWM
        seen, which is at most its ru_maxrss; that one also counts the pre-exec fork of pytest)."""
        _, status, usage = os.wait4(self.proc.pid, 0)
        self._done.set()
        self.seconds = time.monotonic() - self.started
        self.proc.returncode = self.rc = os.waitstatus_to_exitcode(status)
        self.peak = min(usage.ru_maxrss * 1024, self.hwm) if self.hwm else usage.ru_maxrss * 1024
        for t in self._threads:
            t.join()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.stdout, self.stderr = self._out.getvalue().decode(), self._err.getvalue().decode()
        assert not self.killed, f"{self.args} was killed: {self.killed}\n{self.stderr[-3000:]}"
        return self

    def json(self) -> dict:
        assert self.rc == 0, (self.args, self.rc, self.stderr[-3000:])
        return json.loads(self.stdout)


def latent(*args, unprivileged: bool) -> Run:
    return Run([LATENT, *map(str, args)], unprivileged)


def permissions(unreadable: Path) -> tuple[bool, bool]:
    """(run latent with root's permission override dropped, `unreadable` cannot be read by it)."""
    if os.geteuid() != 0:
        return False, not os.access(unreadable, os.R_OK)
    probe = [sys.executable, "-c", _DROP_DAC, sys.executable, "-c", f"open({str(unreadable)!r}, 'rb')"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    if "cannot drop capability" in done.stderr:
        return False, False  # then root reads it: expected to be indexed like a good image
    return True, done.returncode != 0 and "PermissionError" in done.stderr


# -- the corpus ------------------------------------------------------------------------------------
def image_bytes(array, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def gif_bomb(width: int, height: int, frames: int) -> bytes:
    """A looping animated GIF: a width x height logical screen and `frames` frames of one
    pixel each (23 bytes a frame), valid all the way through."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = (b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 1/100 s
             + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # a 1x1 image at (0, 0)
             + b"\x02\x02\x44\x01\x00")  # LZW: clear, index 0, end
    return head + loop + frame * frames + b"\x3b"


GOOD_LINES = ["a cat sleeps on the warm windowsill", "the river floods the valley every spring",
              "she tuned the old piano before the concert"]
UTF8_LINES = {1: "fresh bread from the corner bakery", 3: "the telescope points at a distant galaxy",
              5: "wind turbines spin on the ridge"}
LONG_BEFORE = ["snow covers the mountain pass", "the ferry leaves at dawn"]
LONG_AFTER = ["bees gather pollen in the orchard", "a lighthouse guides ships home"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = build_corpus(tmp_path_factory.mktemp("hostile") / "corpus")
    yield root
    (root / "long-line.txt").unlink()  # 100 MB that pytest would keep for three runs


def build_corpus(root: Path) -> Path:
    (root / "photos").mkdir(parents=True)
    # good images, one of them in a subfolder, two with the wrong extension
    (root / "photos" / "chelsea.jpg").write_bytes(image_bytes(skdata.chelsea(), "JPEG", quality=90))
    (root / "photos" / "coffee.png").write_bytes(image_bytes(skdata.coffee(), "PNG"))
    (root / "rocket-is-a-png.jpg").write_bytes(image_bytes(skdata.rocket(), "PNG"))
    (root / "camera-is-a-jpeg.txt").write_bytes(image_bytes(skdata.camera(), "JPEG", quality=90))
    # an animated GIF bomb within the pixel limit: 9000x9000 (81 M pixels), 20,000 frames, 460 KB
    (root / "frames.gif").write_bytes(gif_bomb(9000, 9000, 20_000))
    # bad images
    (root / "empty.txt").write_bytes(b"")
    jpeg = image_bytes(skdata.astronaut(), "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    png = image_bytes(skdata.astronaut(), "PNG")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "bomb.png").write_bytes(png_bomb(12_000, 12_000))  # 144 M pixels, 69 bytes
    (root / "bomb.gif").write_bytes(gif_bomb(65_535, 65_535, 1000))  # 4.3 G pixels, 23 KB
    (root / "text-is-not-a.png").write_text("a text file, not a picture\n")
    # text
    (root / "good.txt").write_text("".join(line + "\n" for line in GOOD_LINES))
    (root / "invalid-utf8.txt").write_bytes(
        UTF8_LINES[1].encode() + b"\n\xff\xfe broken \xc3\x28 bytes\n" + UTF8_LINES[3].encode()
        + b"\ncaf\xe9 au lait in latin-1\n" + UTF8_LINES[5].encode() + b"\n")
    with open(root / "long-line.txt", "wb") as f:
        f.write("".join(line + "\n" for line in LONG_BEFORE).encode())
        block = b"all work and no play makes jack a dull boy " * (MIB // 43 + 1)
        f.writelines(block[:MIB] for _ in range(LONG_LINE // MIB))
        f.write(b"\n" + "".join(line + "\n" for line in LONG_AFTER).encode())
    # things that are not files to read
    (root / "loop").symlink_to(".", target_is_directory=True)  # a directory symlink loop
    (root / "self-loop.jpg").symlink_to("self-loop.jpg")  # a symlink to itself
    (root / "gone.jpg").symlink_to("nowhere.jpg")  # a broken symlink: open fails, even for root
    os.mkfifo(root / "pipe.jpg")  # reading it would block forever
    secret = root / "secret.jpg"
    secret.write_bytes(image_bytes(skdata.astronaut()[::2, ::2], "JPEG", quality=90))
    secret.chmod(0)
    return root


TEXT_FILES = ["good.txt", "invalid-utf8.txt", "long-line.txt", "empty.txt", "camera-is-a-jpeg.txt"]
GOOD_IMAGES = {"photos/chelsea.jpg": "JPEG", "photos/coffee.png": "PNG", "rocket-is-a-png.jpg": "PNG",
               "camera-is-a-jpeg.txt": "JPEG", "frames.gif": "GIF"}
IMAGE_SKIPS = {  # relative path: what its reason says
    "empty.txt": "empty file",
    "truncated.jpg": "corrupt or truncated image",
    "truncated.png": "corrupt or truncated image",
    "bomb.png": "refused: 12000x12000 = 144,000,000 pixels is over the limit",
    "bomb.gif": "refused: decompression bomb",
    "text-is-not-a.png": "not an image (no decoder recognises it)",
    "good.txt": "not an image",
    "invalid-utf8.txt": "not an image",
    "long-line.txt": "not an image",
    "self-loop.jpg": "unreadable (Too many levels of symbolic links)",
    "gone.jpg": "unreadable (No such file or directory)",
    "pipe.jpg": "not a regular file",
    "secret.jpg": "unreadable (Permission denied)",
}


def text_skips(corpus: Path) -> set[tuple[str, int | None, str]]:
    return {
        (str(corpus / "invalid-utf8.txt"), 2, "not valid UTF-8"),
        (str(corpus / "invalid-utf8.txt"), 4, "not valid UTF-8"),
        (str(corpus / "long-line.txt"), len(LONG_BEFORE) + 1, "line longer than 1 MiB"),
        (str(corpus / "empty.txt"), None, "empty file"),
        (str(corpus / "camera-is-a-jpeg.txt"), None,
         "binary file, not text: an image (read images as format 'images')"),
    }


def stored_rows(index_dir: Path) -> list[dict]:
    with closing(sqlite3.connect(f"file:{index_dir / 'latent.db'}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(
            "SELECT id, key, kind, text, path, metadata, length(vector) AS vector_bytes "
            "FROM items LEFT JOIN vectors USING (id)")]


def stored_skips(index_dir: Path) -> set[tuple[str, int | None, str]]:
    with closing(sqlite3.connect(f"file:{index_dir / 'latent.db'}?mode=ro", uri=True)) as db:
        return set(db.execute("SELECT source, line, reason FROM skipped").fetchall())


def vector_ids(index_dir: Path) -> list[int]:
    from latent.indexer import Index

    with Index.open(index_dir) as index:
        return sorted(int(i) for i in index.vectors.ids())


def check_memory(add: Run, floor: Run, what: str) -> None:
    """The memory `latent add` allocates (anonymous RSS) stays under 1 GiB and within HEADROOM of
    a query process with the same encoder (it loads the same model). Total RSS also counts the pages of shared libraries
    (torch's CUDA build maps ~500 MiB of them), which vary with the page cache: 775-991 MiB for
    the same `latent create` here, against a steady 456 MiB of anonymous memory."""
    grown = add.anon - floor.anon
    assert grown < HEADROOM, (
        f"{what}: `latent add` allocated {add.anon / MIB:.0f} MiB, {grown / MIB:.0f} MiB over the "
        f"{floor.anon / MIB:.0f} MiB of a query with the same encoder")
    assert add.anon < GIB, f"{what}: {add.anon / MIB:.0f} MiB of anonymous memory (peak RSS {add.peak / MIB:.0f} MiB)"


# -- the test --------------------------------------------------------------------------------------
def test_hostile_corpus_through_the_cli(corpus, tmp_path):
    unprivileged, unreadable = permissions(corpus / "secret.jpg")
    images_dir, texts_dir = tmp_path / "images", tmp_path / "texts"
    texts = [str(corpus / name) for name in TEXT_FILES]

    # the two encoders load side by side (2 cores); each `latent create` is its own floor
    creates = [latent("create", images_dir, "--encoder", "efficientnet", unprivileged=unprivileged),
               latent("create", texts_dir, "--encoder", "minilm", unprivileged=unprivileged)]
    # meanwhile: inputs that cannot be opened at all, named on the command line, are refused
    # before anything is read or written (or the encoder loaded), with the reason
    for name, reason in [("self-loop.jpg", "is a symlink loop"), ("gone.jpg", "is a broken symlink"),
                         *([("secret.jpg", "cannot read input")] if unreadable else [])]:
        refused = latent("add", texts_dir, corpus / "good.txt", corpus / name, unprivileged=unprivileged).wait()
        assert refused.rc == 1 and f"{corpus / name}" in refused.stderr and reason in refused.stderr, \
            (name, refused.rc, refused.stderr)
    created = [c.wait() for c in creates]
    assert all(c.rc == 0 for c in created), [c.stderr for c in created]
    # the floors: a query of each empty index, a process that loads the same encoder and encodes
    # one item (`latent create` no longer loads a model: it only needs the encoder's dimension)
    def floors():
        return [latent("similar", images_dir, "--image", corpus / "photos" / "chelsea.jpg", unprivileged=unprivileged),
                latent("search", texts_dir, "a query", unprivileged=unprivileged)]

    for warm in floors():  # the first use of a network exports it to ONNX once (with torch): not the floor
        warm.wait()
    image_floor, text_floor = (f.wait() for f in floors())
    assert image_floor.rc == text_floor.rc == 0, (image_floor.stderr, text_floor.stderr)

    # the default batch size (32): the network runs 8 images at a time, which bounds its activations
    adds = [latent("add", images_dir, corpus, "--json", unprivileged=unprivileged),
            latent("add", texts_dir, *texts, "--json", unprivileged=unprivileged)]
    image_add, text_add = (a.wait() for a in adds)
    for what, floor, add in (("images", image_floor, image_add), ("texts", text_floor, text_add)):
        print(f"\n{what}: query peak RSS {floor.peak / MIB:.0f} MiB (anonymous {floor.anon / MIB:.0f}) "
              f"{floor.seconds:.1f} s; add peak RSS {add.peak / MIB:.0f} MiB (anonymous {add.anon / MIB:.0f}) "
              f"{add.seconds:.1f} s")

    # -- the image folder ------------------------------------------------------------------------
    report = image_add.json()
    good = dict(GOOD_IMAGES)
    expected_skips = dict(IMAGE_SKIPS)
    if not unreadable:  # root with the permission override: the file reads like any other
        good["secret.jpg"] = "JPEG"
        del expected_skips["secret.jpg"]
    skipped: dict[str, list[str]] = {}
    for s in report["skipped_lines"]:
        skipped.setdefault(Path(s["source"]).relative_to(corpus).as_posix(), []).append(s["reason"])
        assert s["line"] is None
    for name, reason in expected_skips.items():
        reasons = skipped.pop(name, [])
        assert len(reasons) == 1 and reasons[0].startswith(reason), (name, reasons)
    assert skipped == {}, f"unexpected skips: {skipped}"
    assert not any("loop/" in s["source"] for s in report["skipped_lines"])  # the loop is walked once
    assert (report["added"], report["count"]) == (len(good), len(good))
    rows = stored_rows(images_dir)
    assert {r["key"] for r in rows} == set(good)
    for row in rows:
        meta = json.loads(row["metadata"])
        assert row["kind"] == "image" and row["vector_bytes"] == 1280 * 4
        assert row["path"] == str((corpus / row["key"]).resolve())
        assert meta["format"] == good[row["key"]] and meta["bytes"] == (corpus / row["key"]).stat().st_size
    frames = json.loads(next(r for r in rows if r["key"] == "frames.gif")["metadata"])
    assert (frames["width"], frames["height"]) == (9000, 9000)  # its first frame, at its full size
    assert stored_skips(images_dir) == {(s["source"], s["line"], s["reason"]) for s in report["skipped_lines"]}
    assert vector_ids(images_dir) == sorted(r["id"] for r in rows)
    check_memory(image_add, image_floor, "image folder")

    # -- the text files --------------------------------------------------------------------------
    report = text_add.json()
    got = {(s["source"], s["line"], s["reason"]) for s in report["skipped_lines"]}
    assert got == text_skips(corpus) and len(report["skipped_lines"]) == len(got)
    lines = GOOD_LINES + list(UTF8_LINES.values()) + LONG_BEFORE + LONG_AFTER
    assert (report["added"], report["count"]) == (len(lines), len(lines))
    rows = stored_rows(texts_dir)
    assert sorted(r["text"] for r in rows) == sorted(lines)  # nothing of a bad line or file
    by_text = {r["text"]: json.loads(r["metadata"]) for r in rows}
    assert by_text[LONG_AFTER[0]] == {"source": "long-line.txt", "line": len(LONG_BEFORE) + 2}
    assert by_text[UTF8_LINES[5]] == {"source": "invalid-utf8.txt", "line": 5}
    assert all(r["kind"] == "text" and r["vector_bytes"] == 384 * 4 for r in rows)
    assert stored_skips(texts_dir) == got
    assert vector_ids(texts_dir) == sorted(r["id"] for r in rows)
    check_memory(text_add, text_floor, "text files")

    # the corpus is as it was: nothing was followed into, replaced or made readable
    assert stat.S_ISFIFO((corpus / "pipe.jpg").lstat().st_mode)
    assert stat.S_IMODE((corpus / "secret.jpg").stat().st_mode) == 0


# -- the limits behind it, in process ------------------------------------------------------------
def test_line_limit_edges(tmp_path, monkeypatch):
    from latent.indexer import readers
    from latent.indexer.readers import LINE_TOO_LONG, Record, Skip, read_inputs

    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 12)
    cases = {  # name: (bytes, [(line, text) of the records], [lines skipped as too long])
        "a.txt": (b"123456789012\n1234567890123\nabcdefghijkl\r\n" + b"x" * 50 + b"\ntail",
                  [(1, "123456789012"), (3, "abcdefghijkl"), (5, "tail")], [2, 4]),
        "only.txt": (b"y" * 100, [], [1]),
        "a.jsonl": (b'{"text":"a"}\n{"text":"toolong"}\n{"text":"b"}', [(1, "a"), (3, "b")], [2]),
        "a.csv": (b"text,n\nab,1\nabcdefghijklm,2\ncd,3\n", [(2, "ab"), (4, "cd")], [3]),
    }
    for name, (data, records, too_long) in cases.items():
        (tmp_path / name).write_bytes(data)
        items = list(read_inputs([str(tmp_path / name)]))
        assert [(r.line, r.text) for r in items if isinstance(r, Record)] == records, name
        assert [(s.line, s.reason) for s in items if isinstance(s, Skip)] == [(n, LINE_TOO_LONG) for n in too_long]


def test_files_that_are_not_text_are_skipped_whole(tmp_path):
    from latent.indexer.readers import Record, Skip, read_inputs

    files = {
        "empty.txt": (b"", "empty file"),
        "utf16.txt": ("a cat\nthe dog\n".encode("utf-16"), "UTF-16 text; only UTF-8 is read"),
        "nul.txt": (b"a cat\x00\x00\x01\nthe dog\n", "binary file, not text (it holds NUL bytes)"),
        "picture.jsonl": (image_bytes(skdata.coins(), "PNG"),
                          "binary file, not text: an image (read images as format 'images')"),
        "picture.csv": (image_bytes(skdata.coins(), "JPEG"),
                        "binary file, not text: an image (read images as format 'images')"),
    }
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        assert [(type(i), i.line, i.reason) for i in read_inputs([str(tmp_path / name)])] == [(Skip, None, reason)]
    # a NUL byte after the first 8 KiB: only its line is skipped
    (tmp_path / "late.txt").write_bytes(b"a good line\n" * 1000 + b"bad\x00line\nlast line\n")
    items = list(read_inputs([str(tmp_path / "late.txt")]))
    assert [(s.line, s.reason) for s in items if isinstance(s, Skip)] == [(1001, "NUL bytes in the line (binary data?)")]
    assert sum(isinstance(r, Record) for r in items) == 1001


def test_the_pixel_limit_is_latents_both_ways(monkeypatch):
    """LATENT_MAX_IMAGE_PIXELS (MAX_PIXELS) can lower the limit and also raise it above Pillow's."""
    import numpy as np
    from PIL import Image as PILImage

    from latent.indexer import images
    from latent.indexer.images import ImageRefused, decode_image

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", PILImage.MAX_IMAGE_PIXELS)  # restored afterwards
    data = image_bytes(np.zeros((60, 60), np.uint8), "PNG")  # 3,600 pixels
    monkeypatch.setattr(images, "MAX_PIXELS", 2_000)
    with pytest.raises(ImageRefused, match=r"refused: 60x60 = 3,600 pixels is over the limit of 2,000"):
        decode_image(data)
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    PILImage.MAX_IMAGE_PIXELS = 1_000  # as if Pillow's own limit were below ours
    assert decode_image(data)[1] == {"width": 60, "height": 60, "format": "PNG"}


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16")])
def test_large_images_are_decoded_reduced_with_their_true_size(fmt, mode, monkeypatch):
    """Over twice WORK_SIDE, an image comes back reduced by a whole factor (EXIF rotation after),
    close to the full-size decode, with the size of the file's image in the metadata."""
    import numpy as np
    from PIL import ImageOps

    from latent.indexer import images
    from latent.indexer.images import decode_image, to_rgb

    monkeypatch.setattr(images, "WORK_SIDE", WORK_SIDE := 96)  # 1024 in use; smaller is quicker here
    big = Image.fromarray(skdata.astronaut()).resize((2 * WORK_SIDE + 100, 2 * WORK_SIDE + 40))
    big = {"RGB": big, "RGBA": big.convert("RGBA"), "P": big.convert("P", palette=Image.Palette.ADAPTIVE),
           "I;16": Image.fromarray(np.asarray(big.convert("L"), np.uint16) * 257)}[mode]
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    buf = io.BytesIO()
    big.save(buf, format=fmt, exif=exif)
    image, info = decode_image(buf.getvalue())
    assert info == {"width": big.height, "height": big.width, "format": fmt}
    assert WORK_SIDE <= min(image.size) < 2 * WORK_SIDE and image.mode == "RGB"
    assert image.width / image.height == pytest.approx(big.height / big.width, rel=0.01)
    full = to_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    reference = np.asarray(full.resize(image.size, Image.Resampling.BOX), float)
    assert np.abs(np.asarray(image, float) - reference).mean() < (10 if mode == "P" else 2)  # P: sampled
