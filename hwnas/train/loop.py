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
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hwnas.data import Tokenizer, make_dataset
from hwnas.io import atomic_write_csv, atomic_write_json
from hwnas.space import SearchSpace, SubnetConfig, load_space
from hwnas.train.checkpoint import (
    load_train_state,
    save_train_state,
    save_weights,
)
from hwnas.train.config import TrainConfig, load_train_config, tomllib
from hwnas.train.flow import flow_matching_loss, interpolate, sample_train_time
from hwnas.train.progress import loss_progress
from hwnas.train.supernet import Supernet, build_supernet
from hwnas.train.validation import make_val_set, val_loss


class _ElasticObjective(nn.Module):
    """Loss of one elastic step; a module so DDP can wrap it."""

    def __init__(self, net: Supernet, tc: TrainConfig) -> None:
        super().__init__()
        self.dit, self.text = net.dit, net.text
        self.space, self.tc = net.space, tc

    def forward(self, x0: torch.Tensor, ids: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                subnets: list[SubnetConfig]) -> tuple[torch.Tensor, dict[str, float]]:
        emb, mask = self.text.encode(ids)  # (B, L, Ct), (B, L)
        xt = interpolate(x0, noise, t)  # (B, C, H, W)
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


def training_set(space: SearchSpace, tc: TrainConfig) -> tuple[torch.Tensor, list[str]]:
    """`dataset_size` training images (N, C, H, W) in [-1, 1] and their captions, rendered once."""
    data = make_dataset(space.dataset, split="train", resolution=space.resolution,
                        size=tc.dataset_size, seed=tc.seed)
    images = torch.stack([data[i][0] for i in range(len(data))])
    captions = [data[i][1] for i in range(len(data))]
    return images, captions


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(experiment: str | Path, *, out: str | Path, steps: int | None = None, resume: bool = False,
          progress: bool = True, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the elastic supernet of `experiment`; write checkpoints to `out`; return the summary.

    Under torchrun (WORLD_SIZE > 1) it joins the process group (gloo on CPU, NCCL on CUDA) and
    splits each global batch across ranks; rank 0 writes the checkpoints.
    """
    experiment, out = Path(experiment), Path(out)
    space = load_space(experiment)
    tc = load_train_config(experiment).with_overrides(steps=steps, **(overrides or {}))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = _dist_info()
    if tc.batch_size % world:
        raise ValueError(f"batch_size {tc.batch_size} does not split across {world} ranks")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available()
                          else "cpu")
    torch.manual_seed(tc.seed)

    images, captions = training_set(space, tc)
    tokenizer = Tokenizer.from_texts(captions + [""])
    ids_all = tokenizer.encode(captions, max_len=space.text_len)  # (N, L)
    null_ids = tokenizer.encode([""], max_len=space.text_len)[0]  # (L,)
    net = build_supernet(space, tokenizer, text_layers=tc.text_layers)
    net.dit.to(device)
    net.text.to(device)
    objective: nn.Module = _ElasticObjective(net, tc)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
    params = [p for p in list(net.dit.parameters()) + list(net.text.parameters())]
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.99), weight_decay=tc.weight_decay)
    ema = [p.detach().clone() for p in params]

    start, wall_before, history, schedule = 0, 0.0, [], [tc.steps]
    if resume:
        state = load_train_state(out)
        saved_steps = int(state["train"]["steps"])
        if not _same_run(state, experiment.read_text(), tc):
            raise ValueError(f"{out}: the run there used other settings; resume with the same "
                             "command (only --steps may grow, to extend it)")
        if tc.steps < saved_steps:
            raise ValueError(f"{out}: the run there is scheduled for {saved_steps} steps; "
                             f"--steps {tc.steps} would shorten it")
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
    if start >= tc.steps:
        return _summary(out, tc, start, wall_before)

    per_rank = tc.batch_size // world
    t0 = time.perf_counter()
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
        loss, logs = objective(images[idx].to(device), ids.to(device), noise.to(device), t.to(device),
                               step_subnets(space, tc, step))
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
        if rank == 0 and (done % tc.val_every == 0 or done == tc.steps):
            _log_validation(out, net, done)
        if rank == 0 and (done % tc.checkpoint_every == 0 or done == tc.steps):
            _checkpoint(out, net, ema, params, opt, experiment, tc, done, elapsed, history,
                        schedule)
    bar(None)
    summary = _summary(out, tc, tc.steps, wall_before + time.perf_counter() - t0)
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


def _checkpoint(out: Path, net: Supernet, ema: list[torch.Tensor], params: list[nn.Parameter],
                opt: torch.optim.Optimizer, experiment: Path, tc: TrainConfig, step: int,
                wall_s: float, history: list[dict[str, float]], schedule: list[int]) -> None:
    """Write the log, the EMA weights + metadata, then the resume state (in that order).

    `schedule` lists the step targets the run was given: [1000] for one run, [1000, 3000] for a
    run extended with `--resume --steps 3000` (its cosine learning rate restarted at step 1000).
    """
    _write_log(out, history)
    raw = {"dit": {k: v.detach().cpu().clone() for k, v in net.dit.state_dict().items()},
           "text": {k: v.detach().cpu().clone() for k, v in net.text.state_dict().items()}}
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.data, e.data = e.data, p.data  # swap in the EMA weights to save them
        weights = net.state_dict()
        for e, p in zip(ema, params):
            p.data, e.data = e.data, p.data
    recent = history[-min(len(history), 50):]
    meta = {
        "format": "hwnas-supernet-1",
        "experiment": net.space.name,
        "experiment_file": experiment.name,
        "experiment_toml": experiment.read_text(),
        "step": step,
        "train": asdict(tc),
        "tokenizer": net.tokenizer.to_dict(),
        "wall_s": round(wall_s, 1),
        "weights": "EMA",
        "loss_recent": sum(r["loss"] for r in recent) / len(recent),
        "schedule": schedule,
        "command": "; ".join(f"hwnas train --experiment {experiment} --steps {n} --out {out}"
                             + (" --resume" if i else "") for i, n in enumerate(schedule)),
    }
    save_weights(out, weights, meta)
    save_train_state(out, {"step": step, "wall_s": wall_s, "train": asdict(tc),
                           "experiment_toml": experiment.read_text(), "schedule": schedule,
                           "dit": raw["dit"],
                           "text": raw["text"], "optimizer": opt.state_dict(),
                           "ema": [e.detach().cpu().clone() for e in ema]})


_LOG = "train_log.csv"
_VAL_LOG = "val_log.csv"


def _log_validation(out: Path, net: Supernet, step: int) -> None:
    """Append the validation flow-matching loss of the largest and smallest sub-DiT (raw weights)."""
    was_training = net.dit.training
    net.eval()
    val = make_val_set(net, n=64, seed=0)
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
