"""Training recipes and what they switch on: resolution order, optimizers and schedules, weight-decay
groups, label smoothing, initialisation from a trained network, distillation and SAQ."""
import json
import math
from dataclasses import asdict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pixelq import ConfigError, create_model, load_checkpoint, train
from pixelq.cli import main
from pixelq.training import list_recipes, read_checkpoint, read_recipe, resolve_config
from pixelq.training.config import TrainConfig, default_config
from pixelq.training.initialization import calibrate, copy_trained_weights
from pixelq.training.loop import learning_rate, make_optimizer, parameter_groups
from pixelq.training.objectives import distillation_loss, training_loss
from pixelq.training.saq import perturbable_layers, perturbed_weights, saq_perturbations

from conftest import run_config, write_image_dataset

W1A2 = dict(first_layer="pixel-embedding", first_layer_kwargs={"d": 4, "bits": 2}, wbits=1, abits=2,
            last_layer="quantized")


# --- recipes -------------------------------------------------------------------------------------

def test_every_shipped_recipe_is_a_complete_valid_config():
    assert {"cifar-float", "cifar-w1a2"} <= set(list_recipes())
    for name, description in list_recipes().items():
        values = read_recipe(name)
        assert description, name
        for key in ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "first_layer", "wbits"):
            assert key in values, (name, key)
        resolve_config(name).validate()


def test_flags_override_the_recipe_which_overrides_the_defaults(tmp_path):
    cfg = resolve_config("cifar-float", lr=0.05)
    recipe = read_recipe("cifar-float")
    assert cfg.lr == 0.05 and cfg.epochs == recipe["epochs"] and cfg.optimizer == recipe["optimizer"]
    assert cfg.recipe == "cifar-float" and cfg.progress == TrainConfig().progress
    own = tmp_path / "mine.yaml"
    own.write_text("description: mine\nepochs: 3\nschedule: onecycle\n")
    assert resolve_config(str(own)).epochs == 3 and resolve_config(str(own)).schedule == "onecycle"


def test_a_recipe_builds_on_its_base(tmp_path):
    """`base:` takes another recipe's settings first: the shipped cifar-w1a2-r4s is cifar-w1a2 with the
    residual flags the README's -r4s run was trained with; a file's base may be a path beside it."""
    r4s = asdict(resolve_config("cifar-w1a2-r4s"))
    flags = asdict(resolve_config("cifar-w1a2", residual_bits=4, signed_residual=True))
    assert r4s.pop("recipe") == "cifar-w1a2-r4s" and flags.pop("recipe") == "cifar-w1a2" and r4s == flags
    (tmp_path / "parent.yaml").write_text("base: cifar-float\nepochs: 7\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nlr: 0.02\n")
    cfg = resolve_config(str(tmp_path / "child.yaml"))
    assert (cfg.epochs, cfg.lr, cfg.optimizer) == (7, 0.02, read_recipe("cifar-float")["optimizer"])


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "bases go round in a circle"),
    ({"a.yaml": "base: a.yaml\n"}, "bases go round in a circle"),
    ({"a.yaml": "base: nope\n"}, "unknown recipe 'nope'"),
    ({"a.yaml": "base: [cifar-float]\n"}, "base must name a recipe"),
])
def test_bad_recipe_bases(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve_config(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("text, message", [
    ("epochz: 3\n", "unknown settings \\['epochz'\\]"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("lr: [\n", "not valid YAML"),
    ("lr: -1\n", "lr must be a positive finite number"),
])
def test_bad_recipe_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve_config(str(path))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*cifar-float"):
        resolve_config("nope")


def test_cli_recipe_and_flags_are_stored_in_metrics_and_checkpoint(tmp_path, tiny_splits, capsys):
    data = write_image_dataset(tmp_path, tiny_splits)
    out = tmp_path / "run"
    assert main(["train", "--recipe", "cifar-float", "--data", str(data), "--epochs", "1", "--batch-size", "16",
                 "--label-smoothing", "0.1", "--no-nesterov", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert read_checkpoint(out / "checkpoint.pt")["config"] == config
    recipe = read_recipe("cifar-float")
    assert config["recipe"] == "cifar-float" and config["lr"] == recipe["lr"] and config["epochs"] == 1
    assert config["label_smoothing"] == 0.1 and config["nesterov"] is False
    assert main(["recipes"]) == 0 and "cifar-w1a2" in capsys.readouterr().out


def test_every_config_field_is_a_flag_or_has_its_own_cli_form():
    from pixelq.cli import build_parser

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train_parser._actions}
    special = {"first_layer_kwargs": "pe_dim", "overrides": "overrides", "progress": "quiet", "recipe": "recipe"}
    for name in default_config():
        assert special.get(name, name) in dests, name


# --- optimizers, schedules, decay groups, label smoothing ----------------------------------------

def test_weight_decay_only_on_conv_and_linear_weights():
    model = create_model("resnet20", in_channels=3, num_classes=10, overrides={"stages.0.0.act1": "lsq:2"}, **W1A2)
    decay, no_decay = parameter_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay}
    assert decayed and all(n.endswith(".weight") and ("conv" in n or n.startswith("fc")) for n in decayed)
    kept = {names[id(p)] for p in no_decay}
    for expected in ("stem.encoder.table", "stem.bn.weight", "stem.bn.bias", "stages.0.0.act1.step"):
        assert any(n.startswith(expected) for n in kept), expected
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizers(name, cls):
    model = create_model("resnet20", in_channels=3, num_classes=10)
    opt = make_optimizer(model, TrainConfig(optimizer=name, lr=0.1, weight_decay=1e-4))
    assert type(opt) is cls and [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] is True
        assert make_optimizer(model, TrainConfig(optimizer="sgd", nesterov=False)).param_groups[0]["nesterov"] is False
        assert make_optimizer(model, TrainConfig(optimizer="sgd", momentum=0)).param_groups[0]["nesterov"] is False


def test_onecycle_schedule_follows_torch_one_cycle_lr():
    cfg = TrainConfig(schedule="onecycle", lr=1.0, epochs=10)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=100, cycle_momentum=False,
                                              anneal_strategy="cos", three_phase=False, pct_start=0.3)
    for step in range(100):
        assert learning_rate(cfg, step, 100) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6, abs=1e-9), step
        opt.step()
        ref.step() if step < 99 else None
    with pytest.raises(ConfigError, match="own warm-up"):
        TrainConfig(schedule="onecycle", warmup_epochs=1).validate()


def test_label_smoothing_reaches_the_loss():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    smooth = training_loss(logits, labels, label_smoothing=0.2)
    log_p = F.log_softmax(logits, 1)
    target = torch.full((5, 4), 0.2 / 4).scatter_add(1, labels[:, None], torch.full((5, 1), 0.8))
    assert smooth.item() == pytest.approx(-(target * log_p).sum(1).mean().item(), rel=1e-6)


# --- knowledge distillation ----------------------------------------------------------------------

def test_distillation_loss_equals_the_hand_computed_value():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.0, 3.0, 1.0]])
    T = 2.0
    p_t = [math.exp(v / T) for v in (0.0, 3.0, 1.0)]
    p_t = [v / sum(p_t) for v in p_t]
    p_s = [math.exp(v / T) for v in (1.0, 2.0, 0.5)]
    p_s = [v / sum(p_s) for v in p_s]
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    assert distillation_loss(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-6)
    ce = F.cross_entropy(s, torch.tensor([1])).item()
    mixed = training_loss(s, torch.tensor([1]), teacher_logits=t, kd_weight=0.25, temperature=T)
    assert mixed.item() == pytest.approx(0.75 * ce + 0.25 * T * T * kl, rel=1e-6)
    assert distillation_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def _float_checkpoint(tmp_path, splits, name="float", epochs=2):
    train(run_config(tmp_path, name, epochs=epochs, lr=0.01), data=splits)
    return str(tmp_path / name / "checkpoint.pt")


@pytest.mark.slow
def test_training_with_a_teacher_resumes_to_the_uninterrupted_result(tmp_path, tiny_splits, monkeypatch):
    import pixelq.training.loop as loop

    teacher = _float_checkpoint(tmp_path, tiny_splits)
    kd = dict(teacher=teacher, kd_weight=0.7, kd_temperature=3.0, epochs=3, **W1A2)
    full = train(run_config(tmp_path, "full", **kd), data=tiny_splits)

    real_save, calls = loop.save_checkpoint, {"n": 0}

    def die_after_first(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(run_config(tmp_path, "killed", **kd), data=tiny_splits)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    resumed = train(run_config(tmp_path, "killed", **kd), data=tiny_splits, resume=True)
    assert resumed["top1"] == full["top1"]
    a = read_checkpoint(tmp_path / "full" / "checkpoint.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "killed" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the teacher changed the result: the same run without it ends elsewhere
    plain = train(run_config(tmp_path, "plain", epochs=3, **W1A2), data=tiny_splits)
    c = read_checkpoint(tmp_path / "plain" / "checkpoint.pt")["state_dict"]
    assert not all(torch.equal(a[k], c[k]) for k in a) or plain["top1"] != full["top1"]


def test_a_teacher_of_other_classes_is_refused(tmp_path, tiny_splits):
    from conftest import make_splits

    teacher = _float_checkpoint(tmp_path, make_splits(classes=4), epochs=1)
    with pytest.raises(ConfigError, match="--teacher.*classes"):
        train(run_config(tmp_path, "kd", teacher=teacher, epochs=1), data=tiny_splits)


# --- initialisation from a trained network -------------------------------------------------------

def test_init_copies_what_fits_and_calibrates_the_rest(tmp_path, tiny_splits):
    source = _float_checkpoint(tmp_path, tiny_splits)
    trained = read_checkpoint(source)["state_dict"]
    model = create_model("resnet20", in_channels=3, num_classes=3,
                         overrides={"stages.0.0.act1": "lsq:2"}, **W1A2)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    summary = copy_trained_weights(model, "resnet20", source, tiny_splits.classes)
    state = model.state_dict()
    assert torch.equal(state["stages.1.0.conv1.weight"], trained["stages.1.0.conv1.weight"])
    assert torch.equal(state["stem.bn.weight"], trained["stem.bn.weight"])
    # the first conv sees 3*d embedding channels, not 3 pixels: it keeps its own initialisation
    assert "stem.conv.weight" in summary["kept_fresh"] and torch.equal(state["stem.conv.weight"], fresh["stem.conv.weight"])
    assert torch.equal(state["stem.encoder.table"], fresh["stem.encoder.table"])
    assert not bool(model.stages[0][0].act1.initialized)
    from pixelq.data import batches

    used = calibrate(model, batches(tiny_splits.train.images, tiny_splits.train.labels, 16), 2)
    assert used == 2 and bool(model.stages[0][0].act1.initialized)
    assert int(model.stem.bn.num_batches_tracked) == 2
    assert not torch.equal(model.stem.bn.running_mean, trained["stem.bn.running_mean"])


def test_init_chain_float_to_w2a2_to_w1a2(tmp_path, tiny_splits):
    source = _float_checkpoint(tmp_path, tiny_splits)
    w2a2 = dict(W1A2, wbits=2, abits=2)
    train(run_config(tmp_path, "w2a2", epochs=1, init=source, **w2a2), data=tiny_splits)
    step2 = str(tmp_path / "w2a2" / "checkpoint.pt")
    metrics = train(run_config(tmp_path, "w1a2", epochs=1, init=step2, **W1A2), data=tiny_splits)
    saved = json.loads((tmp_path / "w1a2" / "metrics.json").read_text())
    assert saved["init"]["from"] == step2 and saved["init"]["copied"] > 0 and metrics["top1"] >= 0
    a = read_checkpoint(step2)["state_dict"]["stem.encoder.table"]
    start = create_model("resnet20", in_channels=3, num_classes=3, **W1A2)
    copy_trained_weights(start, "resnet20", step2, tiny_splits.classes)
    assert torch.equal(start.state_dict()["stem.encoder.table"], a)  # the embedding carries over within a chain


def test_init_from_another_architecture_is_refused(tmp_path, tiny_splits):
    source = _float_checkpoint(tmp_path, tiny_splits, epochs=1)
    with pytest.raises(ConfigError, match="'resnet20' checkpoint cannot start a 'resnet18'"):
        copy_trained_weights(create_model("resnet18", in_channels=3, num_classes=3), "resnet18", source,
                             tiny_splits.classes)


@pytest.mark.parametrize("classes", [["c2", "c1", "c0"], ["c0", "c1", "x"]])
def test_init_from_other_classes_keeps_the_last_layer_fresh_and_says_so(tmp_path, tiny_splits, classes):
    source = _float_checkpoint(tmp_path, tiny_splits, epochs=1)
    trained = read_checkpoint(source)["state_dict"]
    model = create_model("resnet20", in_channels=3, num_classes=3, **W1A2)
    fresh = model.fc.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"trained on classes \['c0', 'c1', 'c2'\].*last layer \(fc\) is not copied"):
        summary = copy_trained_weights(model, "resnet20", source, classes)
    assert torch.equal(model.fc.weight, fresh) and "fc.weight" in summary["kept_fresh"]
    assert torch.equal(model.state_dict()["stages.1.0.conv1.weight"], trained["stages.1.0.conv1.weight"])


# --- SAQ -----------------------------------------------------------------------------------------

def test_saq_perturbation_is_rho_times_the_normalised_gradient():
    model = create_model("resnet20", in_channels=3, num_classes=3, **W1A2)
    x = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    layers = perturbable_layers(model)
    grads = [m.weight.grad.clone() for m in layers]
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    eps = saq_perturbations(layers, 0.4)
    for e, g in zip(eps, grads):
        torch.testing.assert_close(e, 0.4 * g / norm)
    assert torch.sqrt(sum((e * e).sum() for e in eps)).item() == pytest.approx(0.4, rel=1e-5)


def test_saq_adds_the_perturbation_after_the_quantizer_and_removes_it_after():
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=3, num_classes=3, **W1A2)
    x = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    conv = model.stages[1][0].conv1
    before_w, before_q = conv.weight.detach().clone(), conv.quantized_weight().detach().clone()
    running = model.stem.bn.running_mean.clone()
    with perturbed_weights(model, 0.4) as eps:
        e = eps[perturbable_layers(model).index(conv)]
        torch.testing.assert_close(conv.quantized_weight(), before_q + e)  # Q(w) + eps, not Q(w + eps)
        assert not torch.equal(conv.quantized_weight(), before_q)
        model(x)  # a forward inside leaves batch-norm statistics alone
    assert torch.equal(conv.weight, before_w) and torch.equal(conv.quantized_weight(), before_q)
    assert torch.equal(model.stem.bn.running_mean, running)


def test_saq_training_steps_with_the_gradient_at_the_perturbed_weights(tmp_path, tiny_splits):
    a = train(run_config(tmp_path, "sgd", epochs=1, optimizer="sgd", lr=0.05, **W1A2), data=tiny_splits)
    b = train(run_config(tmp_path, "saq", epochs=1, optimizer="sgd", lr=0.05, saq_rho=0.5, **W1A2), data=tiny_splits)
    wa = read_checkpoint(tmp_path / "sgd" / "checkpoint.pt")["state_dict"]["stages.0.0.conv1.weight"]
    wb = read_checkpoint(tmp_path / "saq" / "checkpoint.pt")["state_dict"]["stages.0.0.conv1.weight"]
    assert not torch.equal(wa, wb) and math.isfinite(b["top1"]) and math.isfinite(a["top1"])
    assert json.loads((tmp_path / "saq" / "metrics.json").read_text())["config"]["saq_rho"] == 0.5


def test_cli_init_teacher_saq(tmp_path, tiny_splits, capsys):
    data = write_image_dataset(tmp_path, tiny_splits)
    teacher = _float_checkpoint(tmp_path, tiny_splits, epochs=1)
    out = tmp_path / "cli"
    assert main(["train", "--data", str(data), "--first-layer", "pixel-embedding", "--pe-dim", "4", "--wbits", "1",
                 "--abits", "2", "--last-layer", "quantized", "--epochs", "1", "--batch-size", "16", "--init", teacher,
                 "--teacher", teacher, "--kd-weight", "0.9", "--saq", "0.3", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["init"], config["teacher"], config["kd_weight"], config["saq_rho"]) == (teacher, teacher, 0.9, 0.3)
    assert config["first_layer_kwargs"] == {"d": 4, "bits": 2, "shared": True, "init": "thermometer"}
    model = load_checkpoint(out / "checkpoint.pt")
    assert isinstance(model, nn.Module)
