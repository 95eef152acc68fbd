"""Rectified-flow (flow-matching) objective and ODE samplers.

Convention (as in SD3 / SnapGen++): x_t = (1 - t) * x0 + t * noise with t in [0, 1], t = 1 is
pure noise, and the network predicts the velocity v = noise - x0. Sampling integrates
dx/dt = v from t = 1 down to t = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t (B, C, H, W), t (B,)) -> velocity (B, C, H, W)."""

Solver = Literal["euler", "heun"]


def guided_velocity(model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, *,
                    emb: torch.Tensor, mask: torch.Tensor,
                    null: tuple[torch.Tensor, torch.Tensor] | None = None,
                    cfg_scale: float = 1.0) -> torch.Tensor:
    """`model(x, t, emb, mask)`; with `null` text and `cfg_scale` != 1, classifier-free guided
    (Ho & Salimans 2022): uncond + s (cond - uncond), both halves in one batched call."""
    if null is None or cfg_scale == 1.0:
        return model(x, t, emb, mask)
    batch = x.shape[0]
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([emb, null[0]]), torch.cat([mask, null[1]]))
    cond, uncond = both[:batch], both[batch:]
    return uncond + cfg_scale * (cond - uncond)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution time shift: t' = s t / (1 + (s - 1) t); s > 1 spends more time near noise."""
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_train_time(batch: int, *, generator: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    """Training times: logit-normal(0, 1) (SD3), then shifted. Shape (batch,)."""
    t = torch.sigmoid(torch.randn(batch, generator=generator))
    return shift_time(t, shift)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, with t (B,) broadcast over the image dims."""
    tb = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1.0 - tb) * x0 + tb * noise


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error to the target velocity v = noise - x0 (a scalar)."""
    return torch.mean((v_pred - (noise - x0)) ** 2)


def time_grid(steps: int, *, shift: float = 1.0, start: float = 1.0) -> torch.Tensor:
    """Times `start` -> 0 for `steps` solver steps, shape (steps + 1,): evenly spaced before the
    shift, with the first time exactly `start`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start}")
    unshifted = start / (shift - (shift - 1.0) * start)  # shift_time's inverse at `start`
    return shift_time(torch.linspace(unshifted, 0.0, steps + 1), shift)


@torch.no_grad()
def solve(velocity: VelocityFn, x_start: torch.Tensor, *, steps: int, solver: Solver = "euler",
          shift: float = 1.0, start: float = 1.0) -> torch.Tensor:
    """Integrate the flow ODE from `x_start` at time `start` (pure noise at the default 1) to an
    image (t = 0).

    Euler uses `steps` velocity evaluations; Heun (2nd order, Euler on the last step) uses
    2 * steps - 1.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    grid = time_grid(steps, shift=shift, start=start).to(x_start.device)
    x = x_start
    batch = x_start.shape[0]
    for i in range(steps):
        t, t_next = grid[i], grid[i + 1]
        v = velocity(x, t.expand(batch))
        x_next = x + (t_next - t) * v
        if solver == "heun" and t_next > 0:
            v_next = velocity(x_next, t_next.expand(batch))
            x_next = x + (t_next - t) * 0.5 * (v + v_next)
        x = x_next
    return x
