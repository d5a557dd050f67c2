"""`train(config)`: the training loop, top to bottom. `evaluate(model, images, labels)`."""
from __future__ import annotations

import contextlib
import fcntl
import gc
import math
import os
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.nn import functional as F
from tqdm import tqdm

from ..data import DataSplits, alternating_flips, batch_source, batches, open_data
from ..errors import CheckpointError, ConfigError, DataError, TrainingError
from ..files import write_json, write_jsonl
from ..models import create_model, model_kwargs, model_size_bytes
from ..models.tracing import frozen_for_inference
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .config import STEP_MILESTONES, TrainConfig, config_changes
from .initialization import calibrate, copy_trained_weights
from .objectives import training_loss
from .saq import perturbed_weights
from .distributed import join_process_group, synchronize_batchnorm

def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """lr at optimizer step `step` of `total_steps`.

    cosine / step: linear warm-up over `warmup_epochs`, then cosine to 0, or /10 at STEP_MILESTONES.
    onecycle (Smith 2018, as torch's OneCycleLR): cosine from lr/25 up to lr over the first 30 % of
    the steps, then cosine down to lr/25/1e4; it brings its own warm-up.
    """
    if cfg.schedule == "onecycle":
        start, end, peak = cfg.lr / 25, cfg.lr / 25 / 1e4, max(1.0, 0.3 * total_steps - 1)
        if step <= peak:
            return start + (cfg.lr - start) * 0.5 * (1 - math.cos(math.pi * step / peak))
        t = (step - peak) / max(1.0, total_steps - 1 - peak)
        return end + (cfg.lr - end) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    warmup = int(cfg.warmup_epochs * total_steps / cfg.epochs)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total_steps - warmup)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    return cfg.lr * 0.1 ** sum(t >= m for m in STEP_MILESTONES)


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"; ConfigError for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but this torch sees no CUDA device")
    return device


def parameter_groups(model: nn.Module) -> tuple:
    """(decayed, not decayed) parameters. Weight decay applies to conv and linear weights only: not
    to batch norm, biases or quantizer scales (they set ranges, not features), nor to the
    pixel-embedding table, whose rows for rare pixel values would otherwise decay towards 0."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_weight = isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight"
            (decay if is_weight else no_decay).append(p)
    return decay, no_decay


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0 and cfg.nesterov), Adam (L2 decay in the gradient) or AdamW
    (decoupled decay), with weight decay only on the groups `parameter_groups` says."""
    decay, no_decay = parameter_groups(model)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.Adam(groups, lr=cfg.lr)


def ranked_classes(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest-scoring classes per row, best first; equal scores rank the lower class index
    first. This is argmax's rule (torch and numpy), which the integer runtime's predict uses too,
    so the same logits give the same top-1 in PyTorch and on the runtime."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]


@torch.no_grad()
def evaluate(model: nn.Module, images, labels=None, batch_size: int = 500, device="cpu", workers: int = 0) -> dict:
    """top1 / top5 accuracy in percent (top-k with k capped at the class count), mean loss, n.
    `images` with `labels`, or a StreamedImages. Ties between logits go to the lower class index
    (`ranked_classes`)."""
    model.eval()
    correct1 = correct5 = 0
    loss_sum = 0.0
    for x, y in batches(images, labels, batch_size, workers=workers):
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = ranked_classes(logits, min(5, logits.shape[1]))
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
    n = len(images)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "n": n}


def _check_resumable(saved: dict, cfg: TrainConfig, data: dict, classes: list, path: Path) -> None:
    """CheckpointError unless the run in `saved` can go on with `cfg` on `data` to the result it
    would have reached: the same settings (`config_changes`) and the same data."""
    changed = config_changes(saved["config"], cfg)
    if changed:
        diffs = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise CheckpointError(f"{path}: cannot resume with a different configuration ({diffs}); "
                              "use a new --out folder or the original settings")
    before = saved.get("data") or {}
    if before.get("streamed", False) == data["streamed"]:  # fingerprints of the same kind: pixels, or files
        other = before.get("fingerprint") not in (None, data["fingerprint"])
    else:  # a streamed run resumed in memory, or the reverse: what both kinds record must agree
        other = (before.get("image_shape"), before.get("images"), saved["classes"]) != (
            data["image_shape"], data["images"], classes)
    if other:
        raise CheckpointError(f"{path}: this run trained on other data (images, labels or classes differ from "
                              f"{cfg.data or 'the embedded subset'}); resume it on its own data or use a new --out")


RUN_FILES = ("checkpoint.pt", "metrics.json", "metrics.jsonl")


LOCK_FILE = ".pixelq-lock"  # held by the process training into the folder; the OS releases it when that ends


@contextlib.contextmanager
def claim_run_folder(out: Path, resume: bool, overwrite: bool):
    """Own `out` for one run: an OS lock on OUT/.pixelq-lock, so that a second run into the same folder
    fails at once, naming the holder (the OS drops the lock when its process ends, however it ends);
    an earlier run refused unless `resume` or `overwrite`; and a folder that cannot be written
    refused now, not after an epoch of training. A folder this call created is removed again if the
    run fails before writing anything into it."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out, --overwrite replaces it: give one, not both")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; --out names the folder a run writes into")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / LOCK_FILE, "a+")
    except OSError as e:
        raise ConfigError(f"{out}: cannot write the run here ({e.strerror or e}); choose another --out") from e
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ConfigError(f"{out}: another run is training into this folder ({holder}); wait for it to end or "
                              "choose another --out") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pixelq train, pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        earlier = [name for name in RUN_FILES if (out / name).exists()]
        if earlier and not (resume or overwrite):
            raise ConfigError(f"{out}: holds an earlier run ({', '.join(earlier)}); pass --resume to continue it, "
                              "--overwrite to replace it, or choose another --out")
        try:
            probe = out / ".pixelq-write-test"
            probe.write_bytes(b"")
            probe.unlink()
            if overwrite:
                for name in earlier:
                    (out / name).unlink()
        except OSError as e:
            raise ConfigError(f"{out}: cannot write the run here ({e.strerror or e}); choose another --out") from e
        yield
    except BaseException:
        if created and {p.name for p in out.iterdir()} <= {LOCK_FILE}:  # nothing of the run's: leave no empty folder
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.close()


def training_step(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, x, y, cfg: TrainConfig,
                  teacher: "nn.Module | None" = None, weight: float = 1.0) -> tuple:
    """One optimizer step: the teacher's logits (no gradients), the loss (`training_loss`), its
    gradient - taken again at SAQ's perturbed weights when cfg.saq_rho - and the step. `net` is
    `model` or its DistributedDataParallel wrapper. `weight` scales the gradient: under DDP, this
    process's share of the global batch times the number of processes, so that DDP's average of the
    processes' gradients is the global batch's mean when the shares differ (a partial last batch).
    Returns the first pass's (logits, loss); a non-finite loss returns before any gradient or
    step, for the caller to stop on."""
    with torch.no_grad():
        teacher_logits = teacher(x) if teacher is not None else None
    objective = dict(label_smoothing=cfg.label_smoothing, teacher_logits=teacher_logits, kd_weight=cfg.kd_weight,
                     temperature=cfg.kd_temperature)
    logits = net(x)
    loss = training_loss(logits, y, **objective)
    if not torch.isfinite(loss):
        return logits, loss
    optimizer.zero_grad(set_to_none=True)
    (loss * weight).backward()
    if cfg.saq_rho:  # the gradient again, at the sharpest nearby quantized weights
        with perturbed_weights(model, cfg.saq_rho):
            optimizer.zero_grad(set_to_none=True)
            (training_loss(net(x), y, **objective) * weight).backward()
    optimizer.step()
    return logits, loss


def _load_teacher(path: str, classes: list, device) -> nn.Module:
    """The distillation teacher: eval mode, no gradients, trained on the same classes, batch norm
    folded into its convs (`frozen_for_inference`: its logits are a quarter of a step's time)."""
    taught = read_checkpoint(path)["classes"]
    if taught and taught != list(classes):
        raise ConfigError(f"--teacher {path}: trained on classes {taught}, the data has {list(classes)}")
    return frozen_for_inference(load_checkpoint(path)).to(device)


def train(cfg: TrainConfig, resume: bool = False, data: "DataSplits | None" = None, overwrite: bool = False) -> dict:
    """Train `cfg.model` on `cfg.data` (embedded subset if None), writing into `cfg.out`:
    metrics.jsonl (one line per epoch), checkpoint.pt (each epoch), metrics.json (at the end).
    With `resume`, continue from checkpoint.pt to the same result as an uninterrupted run. A folder
    holding an earlier run is refused unless `resume` or `overwrite` is given. A non-finite loss
    stops the run with TrainingError; the last checkpoint (the last finished epoch) stays.

    Under torchrun, every process walks the same shuffled, augmented global batches and trains on
    its 1/world share (DistributedDataParallel averages the gradients, batch norm normalises over the
    global batch), so N processes train the network one process would; rank 0 evaluates and writes.
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    rank, world, started_group = join_process_group(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.batch_size % world:
        raise ConfigError(f"batch size {cfg.batch_size} must be divisible by the {world} processes")
    with claim_run_folder(Path(cfg.out), resume, overwrite) if rank == 0 else contextlib.nullcontext():
        return _train(cfg, resume, data, device, rank, world, started_group)


def _train(cfg: TrainConfig, resume: bool, data: "DataSplits | None", device, rank: int, world: int,
           started_group: bool) -> dict:
    """`train` in the folder it owns."""
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"

    data = data if data is not None else open_data(cfg.data, image_size=cfg.image_size, stream=cfg.stream)
    identity = data.identity()
    try:
        train_set = data.train.subset(cfg.train_subset, seed=cfg.seed) if cfg.train_subset else data.train
        test_set = data.test.subset(cfg.test_subset, seed=cfg.seed) if cfg.test_subset else data.test
    except DataError as e:
        raise ConfigError(f"--train-subset / --test-subset: {e}") from e

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, in_channels=data.channels, num_classes=len(data.classes), **cfg.model_arguments())
    model.to(device)
    teacher = _load_teacher(cfg.teacher, data.classes, device) if cfg.teacher else None
    resuming = resume and ckpt_path.is_file()
    started_from = None
    if cfg.init and not resuming:  # a resumed run's checkpoint already holds where init led
        started_from = copy_trained_weights(model, cfg.model, cfg.init, data.classes)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 - 1)
        calibrate(model, batches(*batch_source(train_set), cfg.batch_size, shuffle=True, augment=cfg.augment, generator=gen,
                                 workers=cfg.workers), cfg.calibration_batches, device)
    optimizer = make_optimizer(model, cfg)
    # the weight average starts where training starts (after --init) and follows every step
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) if cfg.ema_decay else None
    start_epoch, history = 0, []
    if resuming:
        saved = read_checkpoint(ckpt_path)
        _check_resumable(saved, cfg, identity, data.classes, ckpt_path)
        try:
            if ema is not None:
                model.load_state_dict(saved["averaged"]["trained"])
                ema.module.load_state_dict(saved["state_dict"])
                ema.n_averaged.fill_(saved["averaged"]["steps"])
            else:
                model.load_state_dict(saved["state_dict"])
        except (RuntimeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{ckpt_path}: the saved weights do not fit this model ({e})") from e
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch, history, started_from = saved["epoch"], saved["history"], saved["init"]
    evaluated = ema.module if ema is not None else model  # what is tested, saved for eval/export, and reported
    net = DistributedDataParallel(synchronize_batchnorm(model)) if world > 1 else model

    # A partial last batch is split between the processes as unevenly as it falls (`weight` below
    # evens out their gradients); only one too small to give every process an image is dropped.
    remainder = len(train_set) % cfg.batch_size
    drop_last = 0 < remainder < world
    steps_per_epoch = len(train_set) // cfg.batch_size if drop_last else math.ceil(len(train_set) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    test = None
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        net.train()
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        totals = torch.zeros(3, dtype=torch.float64)  # images, correct, summed loss (this process)
        train_time = 0.0
        epoch_set, pad_crop = train_set, cfg.augment
        if cfg.augment and cfg.crop == "resized":  # a fresh crop of every full image, drawn in the workers
            epoch_set, pad_crop = train_set.with_random_resized_crop(cfg.seed * 1_000_003 + epoch), False
        flips = alternating_flips(len(train_set), epoch, cfg.seed) if cfg.flip == "alternate" else None
        bar = tqdm(batches(*batch_source(epoch_set), cfg.batch_size, shuffle=True, augment=pad_crop, generator=gen,
                           drop_last=drop_last, shard=(rank, world), workers=cfg.workers, flips=flips),
                   total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=True if not cfg.progress or rank > 0 else None)  # None: no bar unless a terminal
        for i, (x, y) in enumerate(bar):
            t0 = time.perf_counter()
            lr = learning_rate(cfg, epoch * steps_per_epoch + i, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            global_batch = min(cfg.batch_size, len(train_set) - i * cfg.batch_size)
            logits, loss = training_step(net, model, optimizer, x, y, cfg, teacher, weight=len(y) * world / global_batch)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}: training diverged. "
                    f"{ckpt_path} keeps the last finished epoch ({epoch}); lower --lr or add --warmup-epochs")
            if ema is not None:
                ema.update_parameters(model)
            train_time += time.perf_counter() - t0
            totals += torch.tensor([len(y), (logits.argmax(1) == y).sum().item(), loss.item() * len(y)],
                                   dtype=torch.float64)
            seen = totals[0].item() * world  # estimate for the bar; exact totals are summed below
            bar.set_postfix(loss=f"{totals[2].item() / totals[0].item():.3f}",
                            acc=f"{100 * totals[1].item() / totals[0].item():.1f}", img_s=f"{seen / train_time:.0f}")
        bar.close()
        if world > 1:
            dist.all_reduce(totals)
        seen, correct, loss_sum = totals.tolist()
        test = evaluate(evaluated, *batch_source(test_set), device=device, workers=cfg.workers) if rank == 0 else None
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen, "train_top1": 100 * correct / seen,
                  "train_images_per_s": seen / train_time, "epoch_s": time.perf_counter() - epoch_start}
        if rank == 0:
            record.update(test_top1=test["top1"], test_top5=test["top5"], test_loss=test["loss"])
        history.append(record)
        if rank == 0:
            averaged = None if ema is None else {"trained": model.state_dict(), "steps": int(ema.n_averaged)}
            save_checkpoint(ckpt_path, model_name=cfg.model, model_kwargs=model_kwargs(model), model=evaluated,
                            optimizer=optimizer, epoch=epoch + 1, config=asdict(cfg), history=history,
                            classes=data.classes, data=identity, init=started_from, averaged=averaged)
            write_jsonl(out / "metrics.jsonl", history)
            if cfg.progress:
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  loss {record['train_loss']:.3f}  "
                           f"train {record['train_top1']:.1f}%  test top1 {test['top1']:.2f}%  "
                           f"{record['train_images_per_s']:.0f} img/s")
        if world > 1:
            dist.barrier()

    metrics = {}
    if rank == 0:
        if test is None:  # resumed a finished run: nothing trained in this call
            test = evaluate(evaluated, *batch_source(test_set), device=device, workers=cfg.workers)
        metrics = {
            "top1": test["top1"], "top5": test["top5"], "n": test["n"], "epochs": cfg.epochs,
            "train_images_per_s": sum(r["train_images_per_s"] for r in history) / len(history),
            "model_size_bytes": model_size_bytes(evaluated), "params": sum(p.numel() for p in evaluated.parameters()),
            "classes": data.classes, "data": identity, "train_size": len(train_set), "config": asdict(cfg),
            "init": started_from,
            "torch_version": str(torch.__version__), "threads": torch.get_num_threads(), "world_size": world,
        }
        write_json(out / "metrics.json", metrics)
    if world > 1:
        shared = [metrics]
        dist.broadcast_object_list(shared, src=0)
        metrics = shared[0]
    if started_group:
        # DDP's reducer keeps gloo work objects (and their tensors) alive; freed only at interpreter
        # shutdown, they abort the process ("terminate called without an active exception"). So
        # free it now (it sits in reference cycles, hence the collect), then close the group.
        del net
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    return metrics
