"""Training loop, checkpoints, resume, evaluation and the command line."""
import json
import math

import pytest
import torch

from pixelq import CheckpointError, ConfigError, TrainConfig, create_model, evaluate, load_checkpoint, train
from pixelq.cli import main
from pixelq.training import learning_rate, read_checkpoint

from conftest import make_splits, run_config, write_image_dataset

QUANT = dict(first_layer="pixel-embedding", first_layer_kwargs={"d": 4, "bits": 2}, wbits=1, abits=2,
             last_layer="quantized")


def test_train_writes_metrics_and_checkpoint(tmp_path, tiny_splits):
    cfg = run_config(tmp_path, **QUANT)
    metrics = train(cfg, data=tiny_splits)
    out = tmp_path / "run"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("top1", "top5", "epochs", "config", "train_images_per_s"):
        assert key in saved
    assert saved["config"]["first_layer"] == "pixel-embedding" and saved["epochs"] == 2
    assert 0 <= saved["top1"] <= saved["top5"] <= 100
    model = load_checkpoint(out / "checkpoint.pt")
    again = evaluate(model, tiny_splits.test.images, tiny_splits.test.labels)
    assert again["top1"] == metrics["top1"] and again["n"] == 24


def test_in_channels_and_classes_come_from_the_data(tmp_path):
    splits = make_splits(channels=1, classes=5, size=10)
    train(run_config(tmp_path, epochs=1, **QUANT), data=splits)
    model = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert model.config.in_channels == 1 and model.config.num_classes == 5
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["classes"] == [f"c{i}" for i in range(5)]


def test_training_learns_the_easy_task(tmp_path, tiny_splits):
    metrics = train(run_config(tmp_path, epochs=4, lr=0.1), data=tiny_splits)
    assert metrics["top1"] > 60  # three brightness classes; chance is 33%


class Killed(Exception):
    pass


@pytest.mark.parametrize("variant", ["float", "quantized", "quantized-ema", "offsets-alternating-flip"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, tiny_splits, variant, monkeypatch):
    import pixelq.training.loop as loop

    kw = {"float": {}, "quantized": QUANT, "quantized-ema": {**QUANT, "ema_decay": 0.8},
          "offsets-alternating-flip": {**QUANT, "input_offsets": True, "flip": "alternate"}}[variant]
    full = train(run_config(tmp_path, "full", epochs=3, **kw), data=tiny_splits)

    real_save = loop.save_checkpoint

    def save_then_die(*args, **kwargs):  # the run is killed right after its first checkpoint
        real_save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(run_config(tmp_path, "killed", epochs=3, **kw), data=tiny_splits)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert read_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"] == 1

    resumed = train(run_config(tmp_path, "killed", epochs=3, **kw), resume=True, data=tiny_splits)
    assert resumed["top1"] == full["top1"]
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("full", "killed"))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    if "ema_decay" in kw:  # the weights the optimizer steps, and how many steps the average has seen
        assert a["averaged"]["steps"] == b["averaged"]["steps"] == 9  # 3 epochs of 3 batches
        assert all(torch.equal(a["averaged"]["trained"][k], b["averaged"]["trained"][k]) for k in a["state_dict"])
    history = [json.loads(line)["epoch"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert history == [1, 2, 3]


def test_weight_average_is_what_the_checkpoint_evaluates(tmp_path, tiny_splits):
    """With --ema the checkpoint's model is the running average of every step's weights (and batch-norm
    statistics): decay d after step t gives avg_t = d * avg_(t-1) + (1 - d) * w_t, avg_1 = w_1."""
    import pixelq.training.loop as loop

    steps = []
    real_step = loop.training_step

    def recorded(net, model, *args, **kwargs):
        out = real_step(net, model, *args, **kwargs)
        steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return out

    loop.training_step = recorded
    try:
        metrics = train(run_config(tmp_path, epochs=1, ema_decay=0.5, **QUANT), data=tiny_splits)
    finally:
        loop.training_step = real_step
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    key = next(k for k, v in saved["state_dict"].items() if k.endswith("conv1.weight"))
    average = steps[0][key]
    for w in steps[1:]:
        average = 0.5 * average + 0.5 * w[key]
    torch.testing.assert_close(saved["state_dict"][key], average)
    assert not torch.equal(saved["state_dict"][key], saved["averaged"]["trained"][key])
    assert evaluate(load_checkpoint(tmp_path / "run" / "checkpoint.pt"), tiny_splits.test.images,
                    tiny_splits.test.labels)["top1"] == metrics["top1"]


def test_resume_refuses_a_different_run_config(tmp_path, tiny_splits):
    train(run_config(tmp_path, epochs=1), data=tiny_splits)
    with pytest.raises(CheckpointError, match="lr"):
        train(run_config(tmp_path, epochs=1, lr=0.2), resume=True, data=tiny_splits)


def test_resume_of_a_finished_run_only_evaluates(tmp_path, tiny_splits):
    first = train(run_config(tmp_path, epochs=1), data=tiny_splits)
    again = train(run_config(tmp_path, epochs=1), resume=True, data=tiny_splits)
    assert again["top1"] == first["top1"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "version"])
def test_bad_checkpoints_raise_checkpoint_error(tmp_path, tiny_splits, damage):
    train(run_config(tmp_path, epochs=1), data=tiny_splits)
    path = tmp_path / "run" / "checkpoint.pt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        raw = torch.load(path, weights_only=True)
        raw["version"] = 99
        torch.save(raw, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_learning_rate_schedules():
    cos = TrainConfig(epochs=10, lr=1.0)
    assert learning_rate(cos, 0, 100) == 1.0
    assert learning_rate(cos, 50, 100) == pytest.approx(0.5)
    assert learning_rate(cos, 99, 100) < 0.01
    step = TrainConfig(epochs=10, lr=1.0, schedule="step")
    assert [learning_rate(step, s, 100) for s in (0, 49, 50, 75, 90)] == pytest.approx([1, 1, 0.1, 0.01, 0.001])
    warm = TrainConfig(epochs=10, lr=1.0, warmup_epochs=1)
    assert learning_rate(warm, 0, 100) == pytest.approx(0.1) and learning_rate(warm, 9, 100) == 1.0
    assert math.isclose(learning_rate(warm, 10, 100), 1.0)


def test_bad_train_run_config(tmp_path, tiny_splits):
    with pytest.raises(ConfigError, match="schedule"):
        train(run_config(tmp_path, schedule="linear"), data=tiny_splits)
    with pytest.raises(ConfigError, match="unknown model"):
        train(run_config(tmp_path, model="vgg"), data=tiny_splits)


# --- command line --------------------------------------------------------------------------

def test_cli_train_then_eval(tmp_path, tiny_splits, capsys):
    data = write_image_dataset(tmp_path, tiny_splits)
    out = tmp_path / "cli"
    args = ["train", "--data", str(data), "--first-layer", "pixel-embedding", "--pe-dim", "4", "--wbits", "1",
            "--abits", "2", "--last-layer", "quantized", "--epochs", "1", "--batch-size", "16", "--out", str(out),
            "--quiet", "--threads", "1"]
    assert main(args) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--data", str(data)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["top1"] == trained["top1"] and evaluated["n"] == 24
    assert main(args + ["--resume"]) == 0


def test_cli_overrides_file(tmp_path, tiny_splits, capsys):
    data = write_image_dataset(tmp_path, tiny_splits)
    overrides = tmp_path / "mixed.yaml"
    overrides.write_text("'stages.0.*.conv1': dorefa:4\n")
    out = tmp_path / "mixed"
    assert main(["train", "--data", str(data), "--wbits", "1", "--abits", "2", "--overrides", str(overrides),
                 "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    model = load_checkpoint(out / "checkpoint.pt")
    assert model.stages[0][0].conv1.weight_quantizer.bits == 4


def test_cli_residual_bits_widen_the_residual_stream_only(tmp_path, tiny_splits, capsys):
    """--residual-bits: the blocks' outputs (and the stem's) carry wider codes, the convs read abits
    codes through act_in; --signed-residual: each branch's codes are signed. Stored in the config,
    rebuilt from the checkpoint, refused by CNV."""
    data = write_image_dataset(tmp_path, tiny_splits)
    out = tmp_path / "wide"
    assert main(["train", "--data", str(data), "--wbits", "1", "--abits", "2", "--residual-bits", "4",
                 "--signed-residual", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["residual_bits"] == 4 and config["signed_residual"] is True
    model = load_checkpoint(out / "checkpoint.pt")
    block = model.stages[1][0]
    assert (model.stem.act.bits, block.act_out.bits, block.res_act.bits) == (4, 4, 4)
    assert (block.act_in.bits, block.act1.bits) == (2, 2)
    assert block.res_act.signed and not block.act_out.signed and not model.stem.act.signed
    narrow = create_model("resnet20", wbits=1, abits=2)
    assert narrow.stages[1][0].act_in is None and narrow.stem.act.bits == 2 and not narrow.stages[1][0].res_act.signed
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--model", "cnv", "--wbits", "1", "--abits", "2", "--residual-bits",
                 "4", "--epochs", "1", "--out", str(tmp_path / "cnv"), "--quiet"]) == 2
    assert "residual_bits" in capsys.readouterr().err


def test_cli_reports_user_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["train", "--model", "resnet99", "--out", str(tmp_path / "y"), "--quiet", "--epochs", "1"]) == 2
    assert "unknown model 'resnet99'" in capsys.readouterr().err


def test_cli_trains_and_evaluates_an_imagenet_style_tree_at_one_size(tmp_path, capsys):
    """train/ + val/ folders of mixed-size JPEGs: --image-size makes them one size, end to end."""
    from conftest import write_imagenet_style

    data = tmp_path / "imagenet"
    write_imagenet_style(data)
    out = tmp_path / "run"
    base = ["--data", str(data), "--threads", "1"]
    assert main(["train", *base, "--epochs", "1", "--batch-size", "4", "--out", str(out), "--quiet"]) == 2
    assert "--image-size" in capsys.readouterr().err
    assert main(["train", *base, "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--out", str(out),
                 "--quiet"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((out / "metrics.json").read_text())["config"]["image_size"] == 16
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), *base, "--image-size", "16"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["n"] == 6 and evaluated["top1"] == trained["top1"]
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), *base]) == 0  # the checkpoint's size
    assert json.loads(capsys.readouterr().out) == evaluated


def test_first_layer_options_come_from_the_encoder():
    """The --pe-* flags set the options of whichever first layer takes them, the defaults and which
    layer takes which being the encoders' own signatures; a recipe's options for its own first layer
    are left out when --first-layer chooses another (cifar-w1a2's pixel embedding, --first-layer float)."""
    from pixelq.cli import _first_layer_kwargs, build_parser
    from pixelq.nn import encoder_options
    from pixelq.training.config import read_recipe

    recipe = read_recipe("cifar-w1a2")["first_layer_kwargs"]

    def options(*flags, layer):
        return _first_layer_kwargs(build_parser().parse_args(["train", *flags]), layer, recipe)

    assert options("--pe-dim", "4", "--pe-per-channel", layer="pixel-embedding") == {**recipe, "d": 4, "shared": False}
    assert _first_layer_kwargs(build_parser().parse_args(["train"]), "thermometer", {}) == {
        "d": encoder_options("thermometer")["d"]}
    with pytest.raises(ConfigError, match="--pe-bits does nothing with first layer 'thermometer'; it sets naive, "
                                          "pixel-embedding options"):
        options("--pe-bits", "3", layer="thermometer")
    from pixelq.cli import _train_config

    float_ends = _train_config(build_parser().parse_args(["train", "--recipe", "cifar-w1a2", "--first-layer", "float",
                                                          "--last-layer", "float"]))
    assert (float_ends.first_layer, float_ends.first_layer_kwargs, float_ends.wbits) == ("float", {}, 1)
