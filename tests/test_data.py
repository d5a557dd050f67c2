"""Readers for every layout, the decode cache, uint8 augmentation, and bad input."""
import gzip
import struct
import tarfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pixelq import DataError, InputError, load_dataset
from pixelq.data import ImageSet, alternating_flips, batches, detect_layout, embedded_data_path, random_crop_flip

from conftest import write_cifar, write_imagenet_style

CLASSES = ["cat", "dog"]


def write_image_folders(root, n=3, size=(6, 5), mode="RGB", suffix=".png"):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "test"):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(a, mode).save(root / split / cls / f"{i:03d}{suffix}")
                arrays[split, cls, i] = a
    return arrays


def test_image_folders_decode_exactly(tmp_path):
    arrays = write_image_folders(tmp_path / "ds")
    d = load_dataset(tmp_path / "ds")
    assert d.classes == CLASSES
    assert d.train.images.shape == (6, 5, 6, 3) and d.train.images.dtype == np.uint8
    assert d.train.labels.dtype == np.int64 and d.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(d.train.images[4], arrays["train", "dog", 1])


def test_grayscale_folders_give_one_channel(tmp_path):
    write_image_folders(tmp_path / "ds", mode="L")
    assert load_dataset(tmp_path / "ds").train.images.shape == (6, 5, 6, 1)


def test_image_folders_under_one_top_folder(tmp_path):
    write_image_folders(tmp_path / "outer" / "inner")
    assert detect_layout(tmp_path / "outer")[0] == "image-folders"
    assert len(load_dataset(tmp_path / "outer").test) == 6


@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_tar_of_image_folders_equals_folders(tmp_path, mode):
    write_image_folders(tmp_path / "ds")
    archive = tmp_path / ("ds.tar.gz" if mode == "w:gz" else "ds.tar")
    with tarfile.open(archive, mode) as tar:
        tar.add(tmp_path / "ds", arcname="ds")
    a, b = load_dataset(tmp_path / "ds"), load_dataset(archive)
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.test.labels, b.test.labels)


def test_cifar10_python_format(tmp_path):
    raw = write_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    d = load_dataset(tmp_path)  # the folder holding cifar-10-batches-py also works
    assert d.train.images.shape == (20, 32, 32, 3) and len(d.classes) == 10
    first = raw["data_batch_1"]["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(d.train.images[0], first)
    assert d.test.labels.tolist() == raw["test_batch"]["labels"]


def test_cifar100_python_format_uses_fine_labels(tmp_path):
    raw = write_cifar(tmp_path / "cifar-100-python", "cifar100")
    d = load_dataset(tmp_path / "cifar-100-python")
    assert len(d.classes) == 100 and d.train.labels.tolist() == raw["train"]["fine_labels"]



# --- ImageNet-style trees: a val/ split, images of mixed sizes, --image-size ------------------

def test_imagenet_style_tree_reads_val_as_test_at_one_size(tmp_path):
    write_imagenet_style(tmp_path / "imagenet")
    assert detect_layout(tmp_path / "imagenet")[0] == "image-folders"
    with pytest.raises(DataError, match="--image-size"):
        load_dataset(tmp_path / "imagenet", use_cache=False)
    d = load_dataset(tmp_path / "imagenet", image_size=12, use_cache=False)
    assert d.train.images.shape == (6, 12, 12, 3) and d.test.images.shape == (6, 12, 12, 3)
    assert d.classes == CLASSES and d.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # the constant blue channel survives the scaling; red and green still run left-right and top-bottom
    assert np.all(np.abs(d.test.images[:3, ..., 2].astype(int) - 60) <= 3)
    assert np.all(np.abs(d.test.images[3:, ..., 2].astype(int) - 180) <= 3)
    assert np.all(np.diff(d.test.images[..., 0].astype(int), axis=2) >= -3)
    assert np.all(np.diff(d.test.images[..., 1].astype(int), axis=1) >= -3)


def test_a_grey_image_among_colour_ones_becomes_colour(tmp_path):
    write_imagenet_style(tmp_path / "imagenet")
    grey = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    Image.fromarray(grey, "L").save(tmp_path / "imagenet" / "val" / "dog" / "n999.JPEG", quality=95)
    d = load_dataset(tmp_path / "imagenet", image_size=12, use_cache=False)
    assert d.test.images.shape == (7, 12, 12, 3)
    last = d.test.images[-1].astype(int)
    assert np.array_equal(last[..., 0], last[..., 1]) and np.array_equal(last[..., 0], last[..., 2])


def test_image_size_keeps_the_centre_of_the_shorter_side(tmp_path):
    """An image whose shorter side already is S is cropped, not scaled: exact pixels survive."""
    rng = np.random.default_rng(1)
    wide, tall = rng.integers(0, 256, (6, 14, 3), dtype=np.uint8), rng.integers(0, 256, (11, 6, 3), dtype=np.uint8)
    for split in ("train", "test"):
        for cls, a in zip(CLASSES, (wide, tall)):
            (tmp_path / "ds" / split / cls).mkdir(parents=True)
            Image.fromarray(a).save(tmp_path / "ds" / split / cls / "0.png")
    d = load_dataset(tmp_path / "ds", image_size=6, use_cache=False)
    assert np.array_equal(d.train.images[0], wide[:, 4:10]) and np.array_equal(d.train.images[1], tall[2:8])


def test_jpeg_draft_decode_matches_a_full_decode(tmp_path):
    """Decoding a large JPEG at a reduced DCT scale (never below S) before the resize changes little."""
    from pixelq.data.readers import _decode
    from pixelq.images import fit

    blocks = np.random.default_rng(2).integers(0, 256, (25, 40, 3), dtype=np.uint8)
    f = tmp_path / "big.jpg"
    Image.fromarray(blocks.repeat(8, 0).repeat(8, 1)).save(f, quality=95)  # 320 x 200, 8 x 8 blocks
    fast = _decode(f.read_bytes(), f.name, 32)
    with Image.open(f) as img:
        img.load()
        full = np.asarray(fit(img, 32))
    assert fast.shape == full.shape == (32, 32, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() <= 6  # 3.5 here; a swapped or shifted image: ~80


def test_tar_of_an_imagenet_style_tree_equals_its_folders(tmp_path):
    write_imagenet_style(tmp_path / "ds")
    archive = tmp_path / "ds.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "ds", arcname="ds")
    a = load_dataset(tmp_path / "ds", image_size=10, use_cache=False)
    b = load_dataset(archive, image_size=10, use_cache=False)
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.test.images, b.test.images)


def test_image_size_on_array_formats_and_in_the_cache_key(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    cache = tmp_path / "cache"
    stored = load_dataset(tmp_path, cache_dir=cache)
    assert np.array_equal(load_dataset(tmp_path, cache_dir=cache, image_size=32).train.images, stored.train.images)
    small = load_dataset(tmp_path, cache_dir=cache, image_size=16)
    assert small.train.images.shape == (20, 16, 16, 3) and small.test.images.shape == (3, 16, 16, 3)
    assert len(list(cache.iterdir())) == 3  # as stored, 32, 16: each its own entry
    assert np.array_equal(load_dataset(tmp_path, cache_dir=cache, image_size=16).test.images, small.test.images)


@pytest.mark.parametrize("size", [0, -3, 2.5, "32", True])
def test_bad_image_size(tmp_path, size):
    write_image_folders(tmp_path / "ds")
    with pytest.raises(DataError, match="image_size"):
        load_dataset(tmp_path / "ds", image_size=size)

def write_idx(path, array, gz=True):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def write_mnist(root, gz=True, n_train_labels=6):
    root.mkdir(parents=True)
    rng = np.random.default_rng(2)
    sfx = ".gz" if gz else ""
    imgs = rng.integers(0, 256, (6, 28, 28))
    write_idx(root / f"train-images-idx3-ubyte{sfx}", imgs, gz)
    write_idx(root / f"train-labels-idx1-ubyte{sfx}", np.arange(n_train_labels) % 10, gz)
    write_idx(root / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (4, 28, 28)), gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", np.arange(4), gz)
    return imgs


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files(tmp_path, gz):
    imgs = write_mnist(tmp_path / "mnist", gz)
    d = load_dataset(tmp_path / "mnist")
    assert d.train.images.shape == (6, 28, 28, 1) and np.array_equal(d.train.images[..., 0], imgs)
    assert d.classes == [str(i) for i in range(6)]


def test_embedded_subset_is_stratified_cifar10():
    d = load_dataset(embedded_data_path())
    assert d.train.images.shape == (5000, 32, 32, 3) and d.test.images.shape == (1000, 32, 32, 3)
    assert np.bincount(d.train.labels).tolist() == [500] * 10
    assert d.classes[0] == "airplane" and d.classes[-1] == "truck"
    assert 100 < d.train.images.mean() < 140


def test_cache_is_used_and_notices_a_changed_source(tmp_path):
    write_image_folders(tmp_path / "ds")
    cache = tmp_path / "cache"
    first = load_dataset(tmp_path / "ds", cache_dir=cache)
    assert len(list(cache.iterdir())) == 1
    assert np.array_equal(load_dataset(tmp_path / "ds", cache_dir=cache).train.images, first.train.images)
    changed = np.full((5, 6, 3), 7, dtype=np.uint8)
    Image.fromarray(changed).save(tmp_path / "ds" / "train" / "cat" / "000.png")
    again = load_dataset(tmp_path / "ds", cache_dir=cache)
    assert np.array_equal(again.train.images[0], changed)
    assert len(list(cache.iterdir())) == 2


def test_corrupt_cache_is_decoded_again(tmp_path):
    write_image_folders(tmp_path / "ds")
    cache = tmp_path / "cache"
    good = load_dataset(tmp_path / "ds", cache_dir=cache)
    (next(cache.iterdir()) / "train_images.npy").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = load_dataset(tmp_path / "ds", cache_dir=cache)
    assert np.array_equal(again.train.images, good.train.images)


# --- bad input -----------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nowhere")


def test_unknown_layout(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown layout"):
        load_dataset(tmp_path / "x")


def test_corrupt_image_is_named(tmp_path):
    write_image_folders(tmp_path / "ds")
    bad = tmp_path / "ds" / "test" / "dog" / "001.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match="001.png"):
        load_dataset(tmp_path / "ds")


def test_images_of_different_sizes(tmp_path):
    write_image_folders(tmp_path / "ds")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "ds" / "train" / "dog" / "002.png")
    with pytest.raises(DataError, match="002.png.*differs"):
        load_dataset(tmp_path / "ds")


def test_truncated_archive(tmp_path):
    write_image_folders(tmp_path / "ds")
    archive = tmp_path / "ds.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "ds", arcname="ds")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(archive)


def test_corrupt_pickle(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(tmp_path)


def test_missing_cifar_batch(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: missing"):
        load_dataset(tmp_path)


def test_mismatched_idx_labels(tmp_path):
    write_mnist(tmp_path / "mnist", n_train_labels=5)
    with pytest.raises(DataError, match="must match"):
        load_dataset(tmp_path / "mnist")


def test_truncated_idx(tmp_path):
    write_mnist(tmp_path / "mnist", gz=False)
    f = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images"):
        load_dataset(tmp_path / "mnist")


def test_image_set_checks_labels():
    with pytest.raises(DataError, match="labels"):
        ImageSet(np.zeros((3, 2, 2, 1), np.uint8), np.zeros(2, np.int64), ["a"])
    with pytest.raises(DataError, match="labels must lie"):
        ImageSet(np.zeros((2, 2, 2, 1), np.uint8), np.array([0, 3]), ["a", "b"])
    with pytest.raises(DataError, match="uint8"):
        ImageSet(np.zeros((2, 2, 2, 1), np.float32), np.zeros(2, np.int64), ["a"])


# --- augmentation --------------------------------------------------------------------------

def crop_flip_reference(image, oy, ox, flip, pad):
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    h, w = image.shape[:2]
    out = padded[oy:oy + h, ox:ox + w]
    return out[:, ::-1] if flip else out


@given(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.integers(0, 4), st.integers(0, 999))
@settings(max_examples=40, deadline=None)
def test_random_crop_flip_matches_reference(n, h, w, c, pad, seed):
    images = torch.randint(0, 256, (n, h, w, c), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    out = random_crop_flip(images, pad=pad, generator=torch.Generator().manual_seed(seed))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    # replay the same random draws to get each image's offsets and coin
    g = torch.Generator().manual_seed(seed)
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=g)
    flips = torch.rand(n, 1, generator=g) < 0.5
    for i in range(n):
        ref = crop_flip_reference(images[i].numpy(), int(oy[i]), int(ox[i]), bool(flips[i]), pad)
        assert np.array_equal(out[i].numpy(), ref)


def test_augmentation_flips_and_shifts_some_images():
    images = torch.arange(16 * 8 * 8 * 3).remainder(251).to(torch.uint8).view(16, 8, 8, 3)
    out = random_crop_flip(images, generator=torch.Generator().manual_seed(0))
    changed = [not torch.equal(a, b) for a, b in zip(out, images)]
    assert 0 < sum(changed) <= 16


def test_augmentation_rejects_float():
    with pytest.raises(InputError):
        random_crop_flip(torch.rand(2, 4, 4, 3))


def test_batches_cover_every_image_once():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(2, 1).repeat(2, 2)
    seen = torch.cat([x[:, 0, 0, 0] for x, _ in batches(images, np.arange(10), 3, shuffle=True,
                                                          generator=torch.Generator().manual_seed(1))])
    assert sorted(seen.tolist()) == list(range(10))


def test_alternating_flips_show_each_image_both_ways_in_two_epochs():
    """The coins of epoch 0 are drawn once from the seed; every later epoch flips each image the other
    way from the one before; `batches` flips exactly the images those coins name (each image's
    columns count up from the left, so the visible part of a crop counts down where it is flipped)."""
    n = 64
    first = alternating_flips(n, 0, seed=3)
    assert torch.equal(first, alternating_flips(n, 2, seed=3)) and torch.equal(~first, alternating_flips(n, 5, seed=3))
    assert 0 < int(first.sum()) < n and not torch.equal(first, alternating_flips(n, 0, seed=4))
    images = np.tile(np.arange(1, 17, dtype=np.uint8)[None, None, :, None], (n, 16, 1, 1))
    for epoch in (0, 1):
        flips = alternating_flips(n, epoch, seed=3)
        for x, y in batches(images, np.arange(n), 10, shuffle=True, augment=True, flips=flips,
                            generator=torch.Generator().manual_seed(epoch)):
            row = x[:, 8, :, 0].int()  # the middle row: always in view after a shift of at most 4
            visible = [r[r > 0] for r in row]
            flipped = torch.tensor([bool(v[1] < v[0]) for v in visible])
            assert torch.equal(flipped, flips[y])


@given(st.integers(9, 200), st.integers(9, 200), st.one_of(st.none(), st.integers(4, 48)), st.sampled_from(["RGB", "L"]),
       st.integers(0, 99))
@settings(max_examples=25, deadline=None)
def test_fast_jpeg_decoding_gives_pillows_pixels(w, h, size, mode, seed):
    """JPEGs go through libjpeg-turbo (simplejpeg) for speed; the pixels must be Pillow's, draft scale included."""
    import io

    from pixelq.data.readers import _decode
    from pixelq.images import fit

    a = np.random.default_rng(seed).integers(0, 256, (h // 3 + 1, w // 3 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(a).resize((w, h)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    with Image.open(io.BytesIO(buf.getvalue())) as ref:
        if size is not None:
            ref.draft(None, (size, size))
        ref.load()
        expected = np.asarray(fit(ref, size) if size is not None else ref)
    assert np.array_equal(_decode(buf.getvalue(), "x.jpg", size), expected)


def test_cmyk_jpegs_are_read_as_rgb():
    import io

    from pixelq.data.readers import _decode

    buf = io.BytesIO()
    Image.new("CMYK", (7, 5), (10, 20, 30, 0)).save(buf, "JPEG")
    assert _decode(buf.getvalue(), "x.jpg").shape == (5, 7, 3)
