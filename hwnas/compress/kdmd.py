"""K-DMD few-step distillation of an extracted sub-DiT (SnapGen++ section 4; DMD: Yin et al.,
CVPR 2024, "One-step Diffusion with Distribution Matching Distillation"; DMD2: Yin et al., 2024).

Generator (the student, initialised from the sub-DiT) samples with `student_steps` Euler steps
and no CFG. One student update (DMD2's backward simulation): pick a step k, run the student
without gradients from noise to x_k, then predict x0_g = x_k - t_k v_student(x_k, t_k). Terms:

- **DMD**: re-noise x0_g to x_t at t ~ U(t_min, t_max); real score = the teacher's CFG velocity
  (the full supernet by default), fake score = the critic's velocity; in x0 space the gradient
  is (x0_fake - x0_real) / mean|x0_g - x0_real| (DMD eq. 7-8's normaliser), applied through the
  surrogate loss 0.5 ||x0_g - sg(x0_g - grad)||^2.
- **KD output**: MSE of x0_g to the teacher's ODE solution from the same x_k (`kd_teacher_steps`
  Euler steps with CFG): the "few-step teacher" target where none exists (proxy scale has none).
- **KD feature**: MSE of a small linear projector of the student's final-layer input tokens to
  the teacher's (conditional branch at the same x_k, t_k).

The critic (fake score) starts as a copy of the student and takes `critic_updates` flow-matching
steps on the detached student samples after every student update. Setting a weight to 0 turns a
term off: `terms("dmd"|"kd"|"kdmd")`. Everything random at step s comes from generators seeded by
(seed, s), so `resume=True` continues a killed run exactly. Under torchrun each rank takes its
slice of the batch and DDP averages the gradients (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hwnas.compress.extract import SubDiT, load_subdit, save_subdit
from hwnas.compress.settings import DistillConfig, mode_name
from hwnas.io import atomic_write_csv, atomic_write_json
from hwnas.model.ops import plain_norm
from hwnas.space import SubnetConfig
from hwnas.train.checkpoint import load_train_state, save_train_state
from hwnas.train.flow import flow_matching_loss, interpolate, time_grid
from hwnas.train.progress import loss_progress
from hwnas.train.supernet import Supernet

STATE = "distill_state.pt"
LOG = "distill_log.csv"


class _Generator(nn.Module):
    """Student + feature projector: one module, so DDP sees one forward per step."""

    def __init__(self, student: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.student, self.projector = student, projector

    def forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        v, h = self.student(x, t, emb, mask, features=True)  # (B, C, H, W), (B, N, Ds)
        return v, self.projector(plain_norm(h))  # (B, N, Dt)


def _teacher(net: Supernet, cfg: SubnetConfig, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor,
             mask: torch.Tensor, null: tuple[torch.Tensor, torch.Tensor], scale: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher CFG velocity (B, C, H, W) and its conditional final-layer tokens (B, N, Dt),
    layer-normalised (no affine) so the feature loss has unit scale."""
    b = x.shape[0]
    v, h = net.dit(torch.cat([x, x]), torch.cat([t, t]), torch.cat([emb, null[0]]),
                   torch.cat([mask, null[1]]), cfg, features=True)
    return v[b:] + scale * (v[:b] - v[b:]), plain_norm(h[:b])


def _prompts(net: Supernet, *, seed: int) -> list[str]:
    if net.space.dataset == "shapes":
        from hwnas.data.shapes import list_prompts

        return [p.text for p in list_prompts("train")]
    from hwnas.data import make_dataset

    data = make_dataset(net.space.dataset, split="train", resolution=net.space.resolution, size=512, seed=seed)
    return sorted({data[i][1] for i in range(len(data))})


def _gen(seed: int, step: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 31 + salt)


def distill(teacher: Supernet, student: SubDiT, *, out: str | Path, dc: DistillConfig | None = None,
            teacher_cfg: SubnetConfig | None = None, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """K-DMD-distill `student` (modified in place) against `teacher`; checkpoints under `out`
    (`model.safetensors`/`model.json`: the student as a sub-DiT directory; `distill_state.pt`;
    `distill_log.csv`). Returns a summary with the DiT evaluations per image."""
    dc = dc or DistillConfig()
    out = Path(out)
    teacher_cfg = teacher_cfg or teacher.space.largest()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if dc.batch_size % world:
        raise ValueError(f"batch_size {dc.batch_size} does not split across {world} ranks")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(dc.seed)
    teacher.dit.to(device).eval().requires_grad_(False)
    teacher.text.to(device).eval().requires_grad_(False)
    dit_t = teacher.space.dim(teacher_cfg.up.width)
    dit_s = student.space.dim(student.cfg.up.width)
    gen = _Generator(student.dit.to(device), nn.Linear(dit_s, dit_t).to(device)).train()
    critic = copy.deepcopy(student.dit).to(device).train()
    settings = {"distill": asdict(dc), "teacher_cfg": teacher_cfg.to_dict(), "student_cfg": student.cfg.to_dict()}
    start, wall_before, history = 0, 0.0, []
    opt_g = torch.optim.AdamW(gen.parameters(), lr=dc.lr, betas=(dc.beta1, 0.99), weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=dc.critic_lr, betas=(dc.beta1, 0.99), weight_decay=0.0)
    if resume:
        state = load_train_state(out, name=STATE, what="distillation")
        if _comparable(state["settings"]) != _comparable(settings):
            raise ValueError(f"{out}: the distillation there used other settings; resume with the same command")
        gen.load_state_dict(state["gen"])
        critic.load_state_dict(state["critic"])
        opt_g.load_state_dict(state["opt_g"])
        opt_c.load_state_dict(state["opt_c"])
        start, wall_before, history = int(state["step"]), float(state["wall_s"]), list(state["history"])
    gen_ddp: nn.Module = gen
    critic_ddp: nn.Module = critic
    if world > 1:
        gen_ddp = nn.parallel.DistributedDataParallel(gen, find_unused_parameters=True)
        critic_ddp = nn.parallel.DistributedDataParallel(critic)
    prompts = _prompts(teacher, seed=dc.seed)
    with torch.no_grad():
        null_e, null_m = teacher.encode([""])
    grid = time_grid(dc.student_steps).to(device)
    shape = (teacher.space.latent_channels, teacher.space.latent_size, teacher.space.latent_size)
    per, lo = dc.batch_size // world, rank * (dc.batch_size // world)
    t0 = time.perf_counter()
    bar = loss_progress(progress and rank == 0, label="distill", total=dc.steps, start=start)
    for step in range(start, dc.steps):
        g = _gen(dc.seed, step, 0)
        idx = torch.randint(len(prompts), (dc.batch_size,), generator=g)[lo:lo + per]
        noise = torch.randn((dc.batch_size, *shape), generator=g)[lo:lo + per].to(device)
        k = int(torch.randint(dc.student_steps, (1,), generator=g))
        t_dmd = (dc.t_min + (dc.t_max - dc.t_min) * torch.rand(dc.batch_size, generator=g))[lo:lo + per].to(device)
        n_dmd = torch.randn((dc.batch_size, *shape), generator=g)[lo:lo + per].to(device)
        with torch.no_grad():
            emb, mask = teacher.encode([prompts[i] for i in idx.tolist()])
            emb, mask = emb.to(device), mask.to(device)
            null = (null_e.to(device).expand(per, -1, -1), null_m.to(device).expand(per, -1))
            x = noise
            for i in range(k):  # backward simulation: the student's own trajectory to step k
                v = gen.student(x, grid[i].expand(per), emb, mask)
                x = x + (grid[i + 1] - grid[i]) * v
        tk = grid[k].expand(per)
        v_s, h_s = gen_ddp(x, tk, emb, mask)
        x0_g = x - grid[k] * v_s  # (B, C, H, W)
        logs: dict[str, float] = {}
        loss = x0_g.new_zeros(())
        if dc.kd_weight or dc.feat_weight:
            with torch.no_grad():
                v_t, h_t = _teacher(teacher, teacher_cfg, x, tk, emb, mask, null, dc.cfg_scale)
                x_t = x  # the teacher's ODE starts from the same x_k
                sub = torch.linspace(float(grid[k]), 0.0, dc.kd_teacher_steps + 1, device=device)
                for i in range(dc.kd_teacher_steps):
                    v_i = v_t if i == 0 else _teacher(teacher, teacher_cfg, x_t, sub[i].expand(per), emb, mask,
                                                      null, dc.cfg_scale)[0]
                    x_t = x_t + (sub[i + 1] - sub[i]) * v_i
            kd = torch.mean((x0_g - x_t) ** 2)
            feat = torch.mean((h_s - h_t) ** 2)
            loss = loss + dc.kd_weight * kd + dc.feat_weight * feat
            logs.update(kd=kd.item(), feat=feat.item())
        if dc.dmd_weight:
            xt = interpolate(x0_g.detach(), n_dmd, t_dmd)
            with torch.no_grad():
                tb = t_dmd.view(-1, 1, 1, 1)
                x0_real = xt - tb * _teacher(teacher, teacher_cfg, xt, t_dmd, emb, mask, null, dc.cfg_scale)[0]
                x0_fake = xt - tb * critic(xt, t_dmd, emb, mask)
                norm = torch.abs(x0_g.detach() - x0_real).mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-5)
                grad = torch.nan_to_num((x0_fake - x0_real) / norm)
            dmd = 0.5 * torch.mean((x0_g - (x0_g - grad).detach()) ** 2)
            loss = loss + dc.dmd_weight * dmd
            logs["dmd"] = dmd.item()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), dc.grad_clip)
        opt_g.step()
        if dc.dmd_weight:  # the fake score follows the student's new samples
            fake = x0_g.detach()
            for j in range(dc.critic_updates):
                gc = _gen(dc.seed, step, 1 + j)
                tc = (dc.t_min + (dc.t_max - dc.t_min) * torch.rand(dc.batch_size, generator=gc))[lo:lo + per]
                nc = torch.randn((dc.batch_size, *shape), generator=gc)[lo:lo + per].to(device)
                closs = flow_matching_loss(critic_ddp(interpolate(fake, nc, tc.to(device)), tc.to(device), emb, mask),
                                           fake, nc)
                opt_c.zero_grad(set_to_none=True)
                closs.backward()
                torch.nn.utils.clip_grad_norm_(critic.parameters(), dc.grad_clip)
                opt_c.step()
            logs["critic"] = closs.item()
        done = step + 1
        elapsed = wall_before + time.perf_counter() - t0
        history.append({"step": done, "loss": loss.item(), "k": k, **logs, "wall_s": round(elapsed, 2)})
        bar(done, loss.item())
        if rank == 0 and (done % dc.checkpoint_every == 0 or done == dc.steps):
            _save(out, student, gen, critic, opt_g, opt_c, settings, done, elapsed, history)
    bar(None)
    student.dit.eval()
    summary = {"out": str(out), "steps": dc.steps, "wall_s": round(wall_before + time.perf_counter() - t0, 1),
               "student_steps": dc.student_steps, "dit_evals_per_image": dc.student_steps,
               "teacher_dit_evals_per_image_28_steps": 2 * 28, "terms": dc.term_names(),
               "loss_last": history[-1]["loss"] if history else float("nan")}
    if rank == 0:
        atomic_write_json(out / "distill_summary.json", summary, sort_keys=True)
    return summary


def load_student(path: str | Path, teacher: Supernet, cfg: SubnetConfig) -> tuple[SubDiT, dict[str, Any]]:
    """A student `distill` finished in `path`, checked against the supernet and pick it will be
    compared with; returns (student, summary) with the summary `distill` returned (plus `mode`).
    One clear ValueError where it is not such a student."""
    path = Path(path)
    student = load_subdit(path)
    meta = student.meta
    run = meta.get("distill")
    if not isinstance(run, dict) or "distill" not in run:
        raise ValueError(f"{path}: not a distilled student (its {path.name}/model.json has no distill settings); "
                         "make one with `hwnas distill`")
    if student.cfg.id != cfg.id:
        raise ValueError(f"{path}: a student of {student.cfg.id}, but the pick is {cfg.id}")
    ours = (teacher.meta.get("experiment_toml", ""), teacher.meta.get("step"))
    if (meta.get("experiment_toml", ""), meta.get("supernet_step")) != ours:
        raise ValueError(f"{path}: distilled from another supernet (step {meta.get('supernet_step')} of its "
                         f"experiment, this checkpoint: step {ours[1]} of {teacher.space.name})")
    dc = DistillConfig(**run["distill"])
    if int(run.get("step", 0)) < dc.steps:
        raise ValueError(f"{path}: its distillation stopped at update {run.get('step')} of {dc.steps}; "
                         "finish it with `hwnas distill ... --resume`")
    summary_file = path / "distill_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {
        "out": str(path), "steps": dc.steps, "student_steps": dc.student_steps,
        "dit_evals_per_image": dc.student_steps, "terms": dc.term_names()}
    return student.eval(), {**summary, "mode": mode_name(dc.term_names()), "loaded_from": str(path)}


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings that must match on resume (the step count may grow)."""
    return {**settings, "distill": {k: v for k, v in settings["distill"].items() if k != "steps"}}


def _save(out: Path, student: SubDiT, gen: _Generator, critic: nn.Module, opt_g: torch.optim.Optimizer,
          opt_c: torch.optim.Optimizer, settings: dict[str, Any], step: int, wall_s: float,
          history: list[dict[str, float]]) -> None:
    """Log, then the student as a sub-DiT directory, then the resume state (that order)."""
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    atomic_write_csv(out / LOG, history, fieldnames=keys)
    names = DistillConfig(**settings["distill"]).term_names()
    save_subdit(student, out, distill={**settings, "step": step, "terms": names},
                source=f"{mode_name(names)} student of {student.cfg.id}")
    state = {"settings": settings, "step": step, "wall_s": wall_s, "history": history, "gen": gen.state_dict(),
             "critic": critic.state_dict(), "opt_g": opt_g.state_dict(), "opt_c": opt_c.state_dict()}
    save_train_state(out, state, name=STATE)
