"""Elastic supernet training with flow matching (single process or under torchrun).

One step (SnapGen++'s elastic training): the largest sub-DiT gets the flow-matching loss; each
sampled sub-DiT (uniform over the space, plus the smallest with `sandwich`) gets the
flow-matching loss and a regression to the largest's stop-gradient velocity. All of it is one
forward of `_ElasticObjective`, so DistributedDataParallel sees one forward and one backward per
step.

Determinism: everything random in step `s` (batch indices, noise, times, condition dropout,
sampled sub-DiTs) is drawn from generators seeded by (seed, s), so a resumed run repeats the
killed run exactly and all ranks agree on the sub-DiTs.
"""

from __future__ import annotations

import csv
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from hwnas.data import Tokenizer, make_dataset
from hwnas.io import atomic_write, atomic_write_csv, atomic_write_json, atomic_write_text, sha256_file
from hwnas.model.vae import Autoencoder
from hwnas.space import SearchSpace, SubnetConfig, load_space
from hwnas.train.checkpoint import (
    WEIGHTS,
    load_train_state,
    load_weights,
    save_train_state,
    save_weights,
    unprefixed,
)
from hwnas.train.config import TrainConfig, load_train_config
from hwnas.train.flow import flow_matching_loss, interpolate, sample_train_time
from hwnas.train.progress import loss_progress
from hwnas.train.supernet import Supernet, build_supernet, space_vae
from hwnas.train.validation import make_val_set, val_loss


class _ElasticObjective(nn.Module):
    """Loss of one elastic step; a module so DDP can wrap it.

    With `standalone` set, only that sub-DiT is trained (flow matching alone): the same code and
    recipe as the supernet, for training a sub-DiT from scratch on its own."""

    def __init__(self, net: Supernet, tc: TrainConfig, *, standalone: SubnetConfig | None = None) -> None:
        super().__init__()
        self.dit, self.text = net.dit, net.text
        self.space, self.tc, self.standalone = net.space, tc, standalone

    def forward(self, x0: torch.Tensor, ids: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                subnets: list[SubnetConfig]) -> tuple[torch.Tensor, dict[str, float]]:
        emb, mask = self.text.encode(ids)  # (B, L, Ct), (B, L)
        xt = interpolate(x0, noise, t)  # (B, C, H, W)
        if self.standalone is not None:
            loss = flow_matching_loss(self.dit(xt, t, emb, mask, self.standalone), x0, noise)
            return loss, {"loss_full": loss.item(), "loss_sub": 0.0, "distill": 0.0}
        v_full = self.dit(xt, t, emb, mask, self.space.largest())
        loss_full = flow_matching_loss(v_full, x0, noise)
        total = loss_full
        target = v_full.detach()
        sub_fm = sub_kd = 0.0
        for cfg in subnets:
            v = self.dit(xt, t, emb, mask, cfg)
            fm = flow_matching_loss(v, x0, noise)
            kd = torch.mean((v - target) ** 2)
            total = total + fm + self.tc.distill_weight * kd
            sub_fm += fm.item() / len(subnets)
            sub_kd += kd.item() / len(subnets)
        return total, {"loss_full": loss_full.item(), "loss_sub": sub_fm, "distill": sub_kd}


def _step_generator(seed: int, step: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 31 + salt)


def step_subnets(space: SearchSpace, tc: TrainConfig, step: int) -> list[SubnetConfig]:
    """The sub-DiTs trained at `step` besides the largest (same on every rank)."""
    rng = random.Random(tc.seed * 7919 + step)
    subs = [space.sample(rng) for _ in range(tc.subnets_per_step)]
    if tc.sandwich:
        subs.append(space.smallest())
    return subs


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak over `tc.steps`.

    Extending a run (`--resume` with more steps) stretches the cosine: the rate goes back up to
    where the longer schedule would be at that step (a warm restart), then decays again.
    """
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def training_set(space: SearchSpace, tc: TrainConfig, *, vae: Autoencoder | None = None,
                 cache_dir: Path | None = None) -> tuple[torch.Tensor, list[str]]:
    """`dataset_size` training samples (N, C, h, w) and their captions, made once: images in
    [-1, 1], or in a latent experiment their latents under `vae`.

    With `cache_dir`, the result is kept there under a name that covers the dataset, resolution,
    size, seed and the VAE's hash, so parallel or resumed runs encode the data once.
    """
    key = f"{space.dataset}-{space.resolution}px-{tc.dataset_size}-seed{tc.seed}"
    if vae is not None:
        key += f"-vae{vae.sha256[:12]}"
    cached = cache_dir / f"{key}.pt" if cache_dir is not None else None
    if cached is not None and cached.exists():
        state = torch.load(cached, weights_only=True)
        return state["x"], list(state["captions"])
    data = make_dataset(space.dataset, split="train", resolution=space.resolution,
                        size=tc.dataset_size, seed=tc.seed)
    x = torch.stack([data[i][0] for i in range(len(data))])  # (N, 3, H, W)
    captions = [data[i][1] for i in range(len(data))]
    if vae is not None:
        x = vae.encode(x)  # (N, C, h, w)
    if cached is not None:
        atomic_write(cached, lambda tmp: torch.save({"x": x, "captions": captions}, tmp))
    return x, captions


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(experiment: str | Path, *, out: str | Path, steps: int | None = None, resume: bool = False,
          progress: bool = True, overrides: dict[str, Any] | None = None,
          standalone: SubnetConfig | None = None, vae: str | Path | None = None,
          max_wall_s: float | None = None, cache_dir: str | Path | None = None,
          init_from: str | Path | None = None, stop_at: int | None = None) -> dict[str, Any]:
    """Train the elastic supernet of `experiment`; write checkpoints to `out`; return the summary.

    `standalone` trains that one sub-DiT from scratch instead (same recipe, flow matching only).
    `vae` overrides the experiment's `[vae] path`. `max_wall_s` stops the run (with a checkpoint)
    once it has trained that long in total, and `stop_at` once it reaches that step (on the same
    schedule: a run of 800 steps stopped at 200 is the first quarter of it); `--resume` continues
    it. `cache_dir` keeps the encoded
    training set (see `training_set`). `init_from` starts from the weights of another checkpoint of
    the same model (see `_warm_start`), with a fresh optimizer and schedule: to continue a run whose
    resume state is lost, or to go on with another batch size or on another machine.

    Under torchrun (WORLD_SIZE > 1) it joins the process group (gloo on CPU, NCCL on CUDA) and
    splits each global batch across ranks; rank 0 writes the checkpoints.
    """
    experiment, out = Path(experiment), Path(out)
    space = load_space(experiment)
    tc = load_train_config(experiment).with_overrides(steps=steps, **(overrides or {}))
    if standalone is not None:
        space.validate(standalone)
        if init_from is not None:
            raise ValueError("--init-from starts a supernet from another's weights; "
                             "a stand-alone run starts from scratch")
    autoencoder = space_vae(space, experiment.read_text(), override=vae, source=str(experiment))
    checked_parent = (_parent_checkpoint(Path(init_from), experiment.read_text(), autoencoder)
                      if init_from is not None and not resume else None)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = _dist_info()
    if tc.batch_size % world:
        raise ValueError(f"batch_size {tc.batch_size} does not split across {world} ranks")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available()
                          else "cpu")
    torch.manual_seed(tc.seed)

    if autoencoder is not None:
        autoencoder.to(device)
    images, captions = training_set(space, tc, vae=autoencoder,
                                    cache_dir=Path(cache_dir) if cache_dir is not None else None)
    images = images.to(device)  # (N, C, h, w): the whole training set lives on the device
    tokenizer = Tokenizer.from_texts(captions + [""])
    ids_all = tokenizer.encode(captions, max_len=space.text_len)  # (N, L)
    null_ids = tokenizer.encode([""], max_len=space.text_len)[0]  # (L,)
    net = build_supernet(space, tokenizer, text_layers=tc.text_layers, vae=autoencoder)
    net.dit.to(device)
    net.text.to(device)
    objective: nn.Module = _ElasticObjective(net, tc, standalone=standalone)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
    parent = (_warm_start(net, Path(init_from), *checked_parent)
              if init_from is not None and checked_parent is not None else None)
    params = [p for p in list(net.dit.parameters()) + list(net.text.parameters())]
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.99), weight_decay=tc.weight_decay)
    ema = [p.detach().clone() for p in params]

    start, wall_before, history, schedule = 0, 0.0, [], [tc.steps]
    if resume:
        state = load_train_state(out)
        saved_steps = int(state["train"]["steps"])
        if not _same_run(state, experiment.read_text(), tc) or state.get("standalone") != (
                standalone.to_dict() if standalone is not None else None):
            raise ValueError(f"{out}: the run there used other settings; resume with the same "
                             "command (only --steps may grow, to extend it)")
        if tc.steps < saved_steps:
            raise ValueError(f"{out}: the run there is scheduled for {saved_steps} steps; "
                             f"--steps {tc.steps} would shorten it")
        parent = state.get("init_from")
        if init_from is not None and (parent is None or Path(parent["path"]) != Path(init_from)):
            raise ValueError(f"{out}: the run there did not start from {init_from}; resume it without --init-from")
        schedule = list(state.get("schedule", [saved_steps]))
        if tc.steps > saved_steps:
            schedule.append(tc.steps)
        net.dit.load_state_dict(state["dit"])
        net.text.load_state_dict(state["text"])
        opt.load_state_dict(state["optimizer"])
        for e, saved in zip(ema, state["ema"]):
            e.copy_(saved)
        start, wall_before = int(state["step"]), float(state["wall_s"])
        history = _read_log(out)
    if start >= min(tc.steps, stop_at or tc.steps):
        return _summary(out, tc, start, wall_before)

    per_rank = tc.batch_size // world
    t0 = time.perf_counter()
    run = _RunInfo(experiment=experiment, tc=tc, schedule=schedule, standalone=standalone, parent=parent)
    bar = loss_progress(progress and rank == 0, label="train", total=tc.steps, start=start)
    for step in range(start, tc.steps):
        g = _step_generator(tc.seed, step, 0)
        idx = torch.randint(len(images), (tc.batch_size,), generator=g)[rank * per_rank:(rank + 1) * per_rank]
        noise = torch.randn((tc.batch_size, *images.shape[1:]), generator=g)[rank * per_rank:(rank + 1) * per_rank]
        t = sample_train_time(tc.batch_size, generator=g, shift=tc.time_shift)[rank * per_rank:(rank + 1) * per_rank]
        drop = (torch.rand(tc.batch_size, generator=g) < tc.cond_dropout)[rank * per_rank:(rank + 1) * per_rank]
        ids = torch.where(drop[:, None], null_ids[None, :], ids_all[idx])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        loss, logs = objective(images[idx.to(device)], ids.to(device), noise.to(device), t.to(device),
                               [] if standalone is not None else step_subnets(space, tc, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip).item()
        opt.step()
        with torch.no_grad():
            decay = min(tc.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        done = step + 1
        elapsed = wall_before + time.perf_counter() - t0
        history.append({"step": done, "loss": loss.item(), **logs, "grad_norm": grad_norm,
                        "lr": lr_at(step, tc), "wall_s": round(elapsed, 2)})
        bar(done, loss.item())
        deadline = (max_wall_s is not None and elapsed >= max_wall_s) or (stop_at is not None and done >= stop_at)
        if rank == 0 and (done % tc.val_every == 0 or done == tc.steps or deadline):
            _log_validation(out, net, ema, params, done, standalone)
        if rank == 0 and (done % tc.checkpoint_every == 0 or done == tc.steps or deadline):
            _checkpoint(out, net, ema, params, opt, run, done, elapsed, history)
        if deadline:
            break
    bar(None)
    summary = _summary(out, tc, done, wall_before + time.perf_counter() - t0)
    if world > 1:
        summary["ranks_identical"] = _ranks_identical(params)
        dist.barrier()
    return summary


def _same_run(state: dict[str, Any], experiment_toml: str, tc: TrainConfig) -> bool:
    """Whether a resume state was made by the same experiment and settings, `steps` aside."""
    def without_steps(toml_text: str) -> dict[str, Any]:
        data = tomllib.loads(toml_text)
        data.get("train", {}).pop("steps", None)
        return data

    return (without_steps(state["experiment_toml"]) == without_steps(experiment_toml)
            and {**state["train"], "steps": tc.steps} == asdict(tc))


def _ranks_identical(params: list[nn.Parameter]) -> bool:
    """Whether every rank ends with bit-identical weights (DDP must keep them in lockstep)."""
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in params])
        local = torch.stack([flat.sum(), (flat * torch.arange(len(flat), dtype=torch.float64)).sum()])
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered)


@dataclass(frozen=True)
class _RunInfo:
    """What a checkpoint records about the run besides weights: its experiment file, settings,
    schedule and, for a stand-alone run, the one sub-DiT it trains.

    `schedule` lists the step targets the run was given: [1000] for one run, [1000, 3000] for a
    run extended with `--resume --steps 3000` (its cosine learning rate restarted at step 1000).
    `parent` describes the checkpoint a warm-started run began from (`_warm_start`).
    """

    experiment: Path
    tc: TrainConfig
    schedule: list[int]
    standalone: SubnetConfig | None
    parent: dict[str, Any] | None = None

    def samples(self, step: int) -> int:
        """Training samples seen by the weights at `step`, the parent's included."""
        return step * self.tc.batch_size + (int(self.parent["samples"]) if self.parent else 0)


_MODEL_SECTIONS = ("experiment", "vae", "model", "space")


def _parent_checkpoint(directory: Path, experiment_toml: str,
                       vae: Autoencoder | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and metadata of the checkpoint a run warm-starts from, checked before any data
    is made: the same experiment sections other than [train] and the same VAE (by hash), and a
    supernet, not a stand-alone run; anything else is refused."""
    tensors, meta = load_weights(directory)
    try:
        theirs = tomllib.loads(meta["experiment_toml"])
    except (KeyError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{directory}: not a supernet checkpoint of this hwnas version ({exc})") from None
    mine = tomllib.loads(experiment_toml)
    differ = [s for s in _MODEL_SECTIONS if mine.get(s) != theirs.get(s)]
    if differ:
        raise ValueError(f"{directory}: trained on another model ([{'], ['.join(differ)}] differ from "
                         "this experiment's); --init-from needs a checkpoint of the same model")
    vae_hash = vae.sha256 if vae is not None else None
    if (meta.get("vae") or {}).get("sha256") != vae_hash:
        raise ValueError(f"{directory}: trained with VAE sha256 {str((meta.get('vae') or {}).get('sha256'))[:12]}, "
                         f"this run uses {str(vae_hash)[:12]}")
    if meta.get("standalone") is not None:
        raise ValueError(f"{directory}: a stand-alone sub-DiT run, not a supernet")
    return tensors, meta


def _warm_start(net: Supernet, directory: Path, tensors: dict[str, torch.Tensor],
                meta: dict[str, Any]) -> dict[str, Any]:
    """Load a checked parent checkpoint's (EMA) weights (`_parent_checkpoint`) into `net`; return
    what the new run records about it. Its tokenizer must be this run's."""
    if meta.get("tokenizer") != net.tokenizer.to_dict():
        raise ValueError(f"{directory}: its tokenizer vocabulary differs from this run's training captions")
    try:
        net.dit.load_state_dict(unprefixed("dit", tensors))
        net.text.load_state_dict(unprefixed("text", tensors))
        step, batch = int(meta["step"]), int(meta["train"]["batch_size"])
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{directory}: not a supernet checkpoint of this hwnas version ({exc})") from None
    parent = meta.get("init_from")
    return {"path": str(directory), "sha256": sha256_file(directory / WEIGHTS), "step": step,
            "batch_size": batch, "device": meta.get("device"), "command": meta.get("command"),
            "samples": step * batch + (int(parent["samples"]) if parent else 0), "init_from": parent}


@contextmanager
def _ema_weights(ema: list[torch.Tensor], params: list[nn.Parameter]) -> Iterator[None]:
    """Swap the EMA weights into the model for the duration of the block."""
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.data, e.data = e.data, p.data
        try:
            yield
        finally:
            for e, p in zip(ema, params):
                p.data, e.data = e.data, p.data


def _checkpoint(out: Path, net: Supernet, ema: list[torch.Tensor], params: list[nn.Parameter],
                opt: torch.optim.Optimizer, run: _RunInfo, step: int, wall_s: float,
                history: list[dict[str, float]]) -> None:
    """Write the log, the EMA weights + metadata, then the resume state (in that order)."""
    _write_log(out, history)
    raw = {"dit": {k: v.detach().cpu().clone() for k, v in net.dit.state_dict().items()},
           "text": {k: v.detach().cpu().clone() for k, v in net.text.state_dict().items()}}
    with _ema_weights(ema, params):
        weights = net.state_dict()
    recent = history[-min(len(history), 50):]
    experiment_toml = run.experiment.read_text()
    standalone = run.standalone.to_dict() if run.standalone is not None else None
    if run.standalone is not None:  # the CLI reads the config back from this file
        atomic_write_text(out / "standalone.json", run.standalone.to_json() + "\n")
    command = "; ".join(f"hwnas train --experiment {run.experiment} --steps {n} --out {out}"
                        + (f" --standalone {out / 'standalone.json'}" if run.standalone is not None else "")
                        + (f" --init-from {run.parent['path']}" if run.parent is not None and not i else "")
                        + (" --resume" if i else "") for i, n in enumerate(run.schedule))
    meta = {
        "format": "hwnas-supernet-1",
        "experiment": net.space.name,
        "experiment_file": run.experiment.name,
        "experiment_toml": experiment_toml,
        "step": step,
        "train": asdict(run.tc),
        "tokenizer": net.tokenizer.to_dict(),
        "wall_s": round(wall_s, 1),
        "weights": "EMA",
        "loss_recent": sum(r["loss"] for r in recent) / len(recent),
        "schedule": run.schedule,
        "standalone": standalone,
        "vae": ({"path": net.vae.path.name, "sha256": net.vae.sha256} if net.vae is not None else None),
        "device": str(net.device),
        "command": command,
        "init_from": run.parent,
        "samples": run.samples(step),
    }
    save_weights(out, weights, meta)
    save_train_state(out, {"step": step, "wall_s": wall_s, "train": asdict(run.tc),
                           "experiment_toml": experiment_toml, "schedule": run.schedule,
                           "standalone": standalone, "init_from": run.parent, "dit": raw["dit"],
                           "text": raw["text"], "optimizer": opt.state_dict(),
                           "ema": [e.detach().cpu().clone() for e in ema]})


_LOG = "train_log.csv"
_VAL_LOG = "val_log.csv"


def _log_validation(out: Path, net: Supernet, ema: list[torch.Tensor], params: list[nn.Parameter],
                    step: int, standalone: SubnetConfig | None) -> None:
    """Append the validation flow-matching loss (EMA weights) to val_log.csv: of the largest and
    smallest sub-DiT, or of the one sub-DiT of a stand-alone run."""
    was_training = net.dit.training
    net.eval()
    with _ema_weights(ema, params):
        val = make_val_set(net, n=64, seed=0)
        if standalone is not None:
            row = {"step": step, "subnet": val_loss(net, standalone, val)}
        else:
            row = {"step": step, "largest": val_loss(net, net.space.largest(), val),
                   "smallest": val_loss(net, net.space.smallest(), val)}
    net.dit.train(was_training)
    net.text.train(was_training)
    path = out / _VAL_LOG
    out.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _write_log(out: Path, history: list[dict[str, float]]) -> None:
    atomic_write_csv(out / _LOG, history)


def _read_log(out: Path) -> list[dict[str, float]]:
    path = out / _LOG
    if not path.exists():
        return []
    with path.open() as fh:
        return [{k: int(float(v)) if k == "step" else float(v) for k, v in row.items()}
                for row in csv.DictReader(fh)]


def _summary(out: Path, tc: TrainConfig, step: int, wall_s: float) -> dict[str, Any]:
    history = _read_log(out)
    recent = history[-min(len(history), 50):] or [{"loss": float("nan")}]
    summary = {"out": str(out), "steps": step, "wall_s": round(wall_s, 1),
               "loss_recent": sum(r["loss"] for r in recent) / len(recent)}
    if _dist_info()[0] == 0:
        atomic_write_json(out / "train_summary.json", summary, sort_keys=True)
    return summary
