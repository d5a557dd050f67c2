"""Streaming image folders: lazily decoded by DataLoader workers, yet batch for batch what the same
images held in memory give (so training on either reaches the same weights)."""
import json
import tarfile

import numpy as np
import pytest
import torch

from pixelq import DataError, load_dataset, train
from pixelq.cli import main
from pixelq.data import StreamedSplits, batches, open_data, open_stream
from pixelq.training import read_checkpoint

from conftest import make_splits, run_config, write_image_dataset


@pytest.fixture
def folders(tmp_path):
    return write_image_dataset(tmp_path, make_splits(n_train=50, n_test=21, size=8))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shard", [(0, 1), (0, 2), (1, 2)])
def test_streamed_batches_equal_in_memory_batches(folders, workers, shard):
    memory, stream = load_dataset(folders), open_stream(folders)
    assert stream.classes == memory.classes and len(stream.train) == len(memory.train)
    kw = dict(batch_size=16, shuffle=True, augment=True, drop_last=shard[1] > 1, shard=shard)
    a = list(batches(memory.train.images, memory.train.labels, generator=torch.Generator().manual_seed(3), **kw))
    b = list(batches(stream.train, generator=torch.Generator().manual_seed(3), workers=workers, **kw))
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_shards_of_all_processes_make_up_the_whole_batch(folders):
    memory = load_dataset(folders)
    whole = list(batches(memory.train.images, memory.train.labels, 16, shuffle=True, augment=True, drop_last=True,
                         generator=torch.Generator().manual_seed(1)))
    parts = [list(batches(memory.train.images, memory.train.labels, 16, shuffle=True, augment=True, drop_last=True,
                          generator=torch.Generator().manual_seed(1), shard=(r, 2))) for r in range(2)]
    for i, (x, y) in enumerate(whole):
        assert torch.equal(x[0::2], parts[0][i][0]) and torch.equal(x[1::2], parts[1][i][0])
        assert torch.equal(y[1::2], parts[1][i][1])


def test_training_on_a_stream_reaches_the_in_memory_weights(tmp_path, folders):
    memory = train(run_config(tmp_path, "memory", epochs=1, data=str(folders)))
    streamed = train(run_config(tmp_path, "stream", epochs=1, data=str(folders), stream=True, workers=1))
    assert streamed["top1"] == memory["top1"] and streamed["data"]["streamed"]
    a = read_checkpoint(tmp_path / "memory" / "checkpoint.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "stream" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stream_subset_is_the_in_memory_subset(folders):
    memory, stream = load_dataset(folders), open_stream(folders)
    a, b = memory.train.subset(12, seed=4), stream.train.subset(12, seed=4)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.images, np.stack([b.decode(i) for i in range(len(b))]))


def test_stream_errors(tmp_path, folders):
    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folders, arcname="d")
    with pytest.raises(DataError, match="streaming reads image folders.*extract"):
        open_stream(archive)
    from PIL import Image

    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(folders / "train" / "c1" / "0001.png")
    stream = open_stream(folders)
    with pytest.raises(DataError, match="0001.png: image shape .* differs.*--image-size"):
        list(batches(stream.train, batch_size=64, workers=1))
    assert open_stream(folders, image_size=6).train.decode(1).shape == (6, 6, 3)


def test_large_folders_are_streamed_without_being_asked(folders):
    with pytest.warns(UserWarning, match="streaming them from disk"):
        data = open_data(folders, memory_share=1e-9)
    assert isinstance(data, StreamedSplits)
    assert not isinstance(open_data(folders), StreamedSplits)


def test_cli_train_and_eval_stream(tmp_path, folders, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(folders), "--stream", "--workers", "1", "--epochs", "1", "--batch-size", "16",
                 "--out", str(out), "--quiet", "--threads", "1"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--data", str(folders), "--stream"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == trained["top1"]
    # resuming a streamed run in memory is the same run
    assert main(["train", "--data", str(folders), "--epochs", "1", "--batch-size", "16", "--out", str(out), "--quiet",
                 "--resume"]) == 0


def test_random_resized_crop_on_uint8():
    from pixelq.data.streaming import random_resized_crop

    image = np.arange(40 * 60 * 3, dtype=np.int64).reshape(40, 60, 3).astype(np.uint8)
    outs = [random_resized_crop(image, 16, np.random.default_rng(s)) for s in range(40)]
    assert all(o.shape == (16, 16, 3) and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(outs[3], random_resized_crop(image, 16, np.random.default_rng(3)))  # drawn from the rng
    assert len({o.tobytes() for o in outs}) == 40
    ramp = np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1))  # columns rise left to right
    flipped = [random_resized_crop(ramp, 8, np.random.default_rng(s))[0] for s in range(60)]
    falling = sum(int(row[0]) > int(row[-1]) for row in flipped)
    assert 15 < falling < 45  # about half are mirrored
    grey = random_resized_crop(image[..., :1], 8, np.random.default_rng(0))
    assert grey.shape == (8, 8)


def test_training_with_random_resized_crops(tmp_path, folders):
    from pixelq import ConfigError

    with pytest.raises(ConfigError, match="needs --stream and --image-size"):
        train(run_config(tmp_path, "a", epochs=1, data=str(folders), crop="resized"))
    metrics = train(run_config(tmp_path, "b", epochs=1, data=str(folders), crop="resized", stream=True, image_size=6,
                               workers=1))
    again = train(run_config(tmp_path, "c", epochs=1, data=str(folders), crop="resized", stream=True, image_size=6,
                             workers=0))
    assert metrics["top1"] == again["top1"]  # the crops are drawn from (seed, epoch, image), not from the worker


def test_cli_run_streams_through_the_runtime(tmp_path, folders, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(folders), "--first-layer", "pixel-embedding", "--pe-dim", "4", "--wbits", "1",
                 "--abits", "2", "--last-layer", "quantized", "--epochs", "1", "--batch-size", "16", "--out", str(out),
                 "--quiet", "--threads", "1"]) == 0
    assert main(["export", str(out / "checkpoint.pt"), "-o", str(tmp_path / "m.pxq")]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "m.pxq"), "--data", str(folders)]) == 0
    in_memory = json.loads(capsys.readouterr().out)
    assert main(["run", str(tmp_path / "m.pxq"), "--data", str(folders), "--stream", "--workers", "1"]) == 0
    streamed = json.loads(capsys.readouterr().out)
    assert (streamed["top1"], streamed["n"]) == (in_memory["top1"], in_memory["n"]) == (streamed["top1"], 21)


def test_grey_images_among_colour_ones_stream_as_in_memory(tmp_path):
    from PIL import Image

    splits = make_splits(n_train=12, n_test=6, size=6)
    root = write_image_dataset(tmp_path, splits)
    first = sorted((root / "train" / "c0").iterdir())[0]  # the first image listed is grey
    Image.open(first).convert("L").save(first)
    memory, stream = load_dataset(root), open_stream(root)
    assert stream.channels == 3 == memory.channels
    got = np.stack([stream.train.decode(i) for i in range(len(stream.train))])
    assert np.array_equal(got, memory.train.images)
