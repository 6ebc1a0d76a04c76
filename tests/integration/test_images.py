"""Image files: decoding every mode correctly, refusing bad files with reasons, walking
folders safely, and ingesting a hostile folder without losing anything."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import png_bomb

from latent.indexer import Index, InputError, Record
from latent.indexer.images import ImageRecord, ImageRefused, decode_image, load_image, read_images
from latent.indexer.readers import Skip, read_inputs
from latent.search import search, similar

skdata = pytest.importorskip("skimage.data")


def png_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92, **kw)
    return buf.getvalue()


# -- decoding ------------------------------------------------------------------------------------
def test_modes_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    img, info = decode_image(png_bytes(rgba))
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (255, 255, 255) and img.getpixel((0, 0)) == (0, 0, 255)
    assert info == {"width": 4, "height": 4, "format": "PNG"}

    gray16 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    img, _ = decode_image(png_bytes(gray16))
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]

    palette = Image.fromarray(skdata.coffee()).convert("P", palette=Image.ADAPTIVE, colors=32)
    img, info = decode_image(png_bytes(palette))
    assert img.mode == "RGB" and info["format"] == "PNG"
    assert np.abs(np.asarray(img, float) - skdata.coffee()).mean() < 12

    cmyk = Image.fromarray(skdata.coffee()).convert("CMYK")
    img, info = decode_image(jpeg_bytes(cmyk))
    assert img.mode == "RGB" and info["format"] == "JPEG"
    assert np.abs(np.asarray(img, float) - skdata.coffee()).mean() < 12

    gray = Image.fromarray(skdata.camera())
    img, _ = decode_image(png_bytes(gray))
    assert img.mode == "RGB" and img.getpixel((10, 10))[0] == img.getpixel((10, 10))[2]


def test_exif_orientation_is_applied():
    photo = Image.fromarray(skdata.rocket())  # 640 wide, 427 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img, info = decode_image(jpeg_bytes(photo, exif=exif))
    assert (info["width"], info["height"]) == (427, 640)
    upright = np.asarray(photo.transpose(Image.Transpose.ROTATE_270), float)
    assert np.abs(np.asarray(img, float) - upright).mean() < 8


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is plain text, not a picture", "not an image"),
    (b"\xff\xd8\xff\xe0" + os.urandom(2000), "corrupt or truncated"),
    (png_bomb(60000, 60000), "decompression bomb"),
])
def test_bad_bytes_are_refused_with_a_reason(data, reason):
    with pytest.raises(ImageRefused, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_refused():
    data = jpeg_bytes(Image.fromarray(skdata.astronaut()))
    with pytest.raises(ImageRefused, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_load_image_errors_name_the_file(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"nope")
    with pytest.raises(InputError, match="x.jpg"):
        load_image(tmp_path / "x.jpg")


# -- a hostile folder ----------------------------------------------------------------------------
GOOD = {"animals/chelsea.jpg", "animals/deep/coffee.png", "rocket.jpg", "astronaut.png", "camera.png",
        "no-extension-png"}


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """Real photos in several formats and modes, next to every kind of bad file."""
    root = tmp_path / "photos"
    (root / "animals" / "deep").mkdir(parents=True)
    (root / "animals" / "chelsea.jpg").write_bytes(jpeg_bytes(Image.fromarray(skdata.chelsea())))
    (root / "animals" / "deep" / "coffee.png").write_bytes(png_bytes(Image.fromarray(skdata.coffee())))
    (root / "rocket.jpg").write_bytes(jpeg_bytes(Image.fromarray(skdata.rocket())))
    (root / "astronaut.png").write_bytes(png_bytes(Image.fromarray(skdata.astronaut()).convert("RGBA")))
    (root / "camera.png").write_bytes(png_bytes(Image.fromarray(skdata.camera())))
    (root / "no-extension-png").write_bytes(png_bytes(Image.fromarray(skdata.coins())))
    # bad files
    (root / "copy-of-rocket.jpg").write_bytes((root / "rocket.jpg").read_bytes())  # same content
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / "fake.png").write_bytes(b"<html>not a png</html>")
    full = jpeg_bytes(Image.fromarray(skdata.astronaut()))
    (root / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (root / "bomb.png").write_bytes(png_bomb(50000, 50000))
    (root / "animals" / "loop").symlink_to(root, target_is_directory=True)  # a symlink loop
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    os.mkfifo(root / "pipe.jpg")
    return root


EXPECTED_SKIPS = {
    "copy-of-rocket.jpg": "same content as 'rocket.jpg'",
    "empty.jpg": "empty file",
    "notes.txt": "not an image",
    "fake.png": "not an image",
    "truncated.jpg": "corrupt or truncated",
    "bomb.png": "decompression bomb",
    "dangling.jpg": "unreadable",
    "pipe.jpg": "not a regular file",
}


def test_read_images_walks_once_and_keys_are_relative(photo_dir):
    items = list(read_images([str(photo_dir)]))
    records = [i for i in items if isinstance(i, ImageRecord)]
    skips = {Path(s.source).name: s.reason for s in items if isinstance(s, Skip)}
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys))  # the loop was not followed twice
    assert GOOD <= set(keys)
    assert not any(k.startswith("animals/loop/") for k in keys)
    assert skips == {"empty.jpg": "empty file", "notes.txt": "not an image",
                     "dangling.jpg": skips["dangling.jpg"], "pipe.jpg": "not a regular file"}
    assert skips["dangling.jpg"].startswith("unreadable")
    single = list(read_images([str(photo_dir / "rocket.jpg")]))
    assert [r.key for r in single] == ["rocket.jpg"]
    with pytest.raises(InputError):
        list(read_images([str(photo_dir / "missing")]))


def test_ingest_hostile_folder_loses_nothing(photo_dir, tmp_path):
    index = Index.create(tmp_path / "idx", encoder="efficientnet")
    first = index.add(read_inputs([str(photo_dir / "rocket.jpg")]))
    assert first.added == 1
    report = index.add(read_inputs([str(photo_dir)]))
    skipped = {Path(s.source).name: s.reason for s in report.skip_examples()}
    for name, reason in EXPECTED_SKIPS.items():
        assert reason in skipped.pop(name), (name, skipped)
    assert skipped == {}
    assert index.count() == len(GOOD)
    assert (report.added, report.unchanged) == (len(GOOD) - 1, 1)
    assert {s["reason"] for s in index.store.skipped()} >= {"empty file", "not an image"}
    hit = similar(index, key="animals/chelsea.jpg", k=len(GOOD) - 1)
    assert {h.key for h in hit} == GOOD - {"animals/chelsea.jpg"}
    meta = index.store.fetch([index.store.lookup(["animals/chelsea.jpg"])["animals/chelsea.jpg"][0]])
    meta = next(iter(meta.values()))["metadata"]
    assert (meta["width"], meta["height"], meta["format"]) == (451, 300, "JPEG")
    assert meta["bytes"] == (photo_dir / "animals" / "chelsea.jpg").stat().st_size
    assert meta["path"] == str((photo_dir / "animals" / "chelsea.jpg").resolve())
    assert len(meta["sha256"]) == 64 and meta["mtime"] > 0
    assert len(meta["labels"]) == 5 and meta["label"] == meta["labels"][0]["label"]
    again = index.add(read_inputs([str(photo_dir)]))
    assert (again.added, again.replaced, again.unchanged) == (0, 0, len(GOOD))
    assert index.check()["ok"]


def test_image_into_text_index_and_text_into_image_index_are_refused(photo_dir, tmp_path):
    words = Index.create(tmp_path / "words", encoder="glove")
    with pytest.raises(Exception, match="cannot encode images.*efficientnet"):
        words.add(read_inputs([str(photo_dir / "rocket.jpg")]))
    assert words.count() == 0
    images = Index.create(tmp_path / "images", encoder="efficientnet")
    with pytest.raises(Exception, match="cannot encode texts"):
        images.add([Record(text="a rocket")])
    images.add(read_inputs([str(photo_dir / "rocket.jpg")]))
    with pytest.raises(Exception, match="not text.*conse"):
        search(images, "a rocket")
