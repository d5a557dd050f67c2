"""`pixelq predict` and `Runtime.classify`: image files of every kind Pillow reads, prepared as the
model's training images were, and bad files reported without losing the others."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pixelq.cli import main
from pixelq.errors import DataError
from pixelq.images import fit, image_files, read_image
from pixelq.runtime import load

MODEL = "zoo:resnet20-w1a2-pe-qlast"
SHAPE = (32, 32, 3)


def _picture(h=48, w=40, seed=0) -> np.ndarray:
    """A smooth RGB picture (resizing it moves values a little, not a lot)."""
    rng = np.random.default_rng(seed)
    return np.asarray(Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h)))


def _expected(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(fit(Image.fromarray(rgb), 32))


def test_any_size_is_scaled_and_centre_cropped(tmp_path):
    a = _picture(60, 100)
    Image.fromarray(a).save(tmp_path / "wide.png")
    got = read_image(tmp_path / "wide.png", SHAPE)
    assert got.shape == SHAPE and got.dtype == np.uint8
    assert np.array_equal(got, _expected(a))


def test_exif_orientation_is_applied(tmp_path):
    a = _picture(48, 32)
    stored = Image.fromarray(np.rot90(a, k=1))  # what a camera writes: the sensor's rows, plus a tag saying how to turn
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(tmp_path / "rotated.png", exif=exif)
    assert np.array_equal(read_image(tmp_path / "rotated.png", SHAPE), _expected(a))


def test_grey_palette_and_16_bit_images(tmp_path):
    grey = _picture()[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    assert np.array_equal(read_image(tmp_path / "grey.png", SHAPE), _expected(np.repeat(grey[..., None], 3, 2)))

    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit greyscale, 65535 = white
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert np.array_equal(read_image(tmp_path / "deep.png", SHAPE), read_image(tmp_path / "grey.png", SHAPE))

    rgb = _picture(seed=3)
    palette = Image.fromarray(rgb).quantize(64)
    palette.save(tmp_path / "palette.gif")
    assert np.array_equal(read_image(tmp_path / "palette.gif", SHAPE), _expected(np.asarray(palette.convert("RGB"))))


def test_transparency_shows_as_white(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (200, 10, 10, 255)  # opaque red left half, fully transparent (black) right half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    got = read_image(tmp_path / "cutout.png", SHAPE)
    assert (got[:, :14] == (200, 10, 10)).all() and (got[:, 18:] == 255).all()


def test_one_channel_models_get_grey(tmp_path):
    a = _picture()
    Image.fromarray(a).save(tmp_path / "colour.png")
    got = read_image(tmp_path / "colour.png", (32, 32, 1))
    assert got.shape == (32, 32, 1)
    assert np.array_equal(got[..., 0], np.asarray(fit(Image.fromarray(a).convert("L"), 32)))


@pytest.mark.parametrize("content, message", [(b"", "cannot read"), (b"not an image at all", "cannot read"),
                                              (None, "no such file")])
def test_unreadable_files_name_themselves(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=f"bad.jpg: {message}"):
        read_image(path, SHAPE)


def test_truncated_jpeg_is_an_error_not_a_grey_image(tmp_path):
    Image.fromarray(_picture(64, 64)).save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg", SHAPE)


def test_classify_ranks_as_predict_does_and_keeps_going_past_bad_files(tmp_path):
    runtime = load(MODEL)
    files = []
    for k in range(3):
        files.append(tmp_path / f"{k}.png")
        Image.fromarray(_picture(50 + 10 * k, 40, seed=k)).save(files[-1])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    results = runtime.classify([files[0], tmp_path / "broken.png", *files[1:]], top=4)
    assert [r["file"] for r in results] == [str(f) for f in (files[0], tmp_path / "broken.png", *files[1:])]
    assert "broken.png" in results[1]["error"] and "top" not in results[1]
    good = [r for r in results if "top" in r]
    labels = runtime.predict(np.stack([read_image(f, SHAPE) for f in files]))
    assert [runtime.classes.index(r["top"][0]["class"]) for r in good] == labels.tolist()
    for r in good:
        scores = [t["score"] for t in r["top"]]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-9


def test_folders_and_globs_expand_to_their_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.jpg", "sub/c.PNG"):
        Image.fromarray(_picture()).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    assert image_files([tmp_path]) == [str(tmp_path / n) for n in ("a.jpg", "b.png", "sub/c.PNG")]
    assert image_files([str(tmp_path / "*.png")]) == [str(tmp_path / "b.png")]
    assert image_files([str(tmp_path / "none-*.png")]) == [str(tmp_path / "none-*.png")]


def test_predict_command(tmp_path, capsys):
    Image.fromarray(_picture()).save(tmp_path / "ok.png")
    assert main(["predict", MODEL, str(tmp_path / "ok.png"), "--top", "2", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["file"].endswith("ok.png") and len(result["top"]) == 2

    assert main(["predict", MODEL, str(tmp_path / "ok.png"), str(tmp_path / "missing.jpg")]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{tmp_path / 'ok.png'}: ") and "missing.jpg: no such file" in err

    assert main(["predict", "zoo:no-such-model", str(tmp_path / "ok.png")]) == 2
    assert "unknown zoo model 'no-such-model'" in capsys.readouterr().err
    assert main(["predict", MODEL, str(tmp_path / "ok.png"), "--top", "0"]) == 2


def test_runtime_is_reachable_from_a_plain_import():
    code = "import pixelq; print(pixelq.runtime.load('zoo:resnet20-w1a2-pe-qlast').classes[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "airplane"
