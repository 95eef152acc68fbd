from __future__ import annotations

import pytest
import torch

from hwnas.train.flow import (
    interpolate,
    sample_train_time,
    shift_time,
    solve,
    time_grid,
)


def test_interpolation_endpoints() -> None:
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert torch.equal(interpolate(x0, noise, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(3)), noise)


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_solvers_are_exact_on_the_true_velocity_of_a_straight_path(solver: str, steps: int) -> None:
    """For a single data point the optimal velocity is constant (noise - x0): any solver lands on x0."""
    x0, noise = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    out = solve(lambda x, t: noise - x0, noise, steps=steps, solver=solver)  # type: ignore[arg-type]
    assert torch.allclose(out, x0, atol=1e-5)


def test_heun_counts_evaluations() -> None:
    calls = []
    solve(lambda x, t: calls.append(1) or torch.zeros_like(x), torch.zeros(1, 1, 2, 2), steps=4, solver="heun")
    assert len(calls) == 2 * 4 - 1


def test_time_shift_and_grid() -> None:
    t = torch.linspace(0, 1, 11)
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.all(shifted >= t)
    grid = time_grid(4, shift=2.0)
    assert grid[0] == 1 and grid[-1] == 0 and torch.all(grid[:-1] > grid[1:])
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_a_grid_from_a_start_time_is_the_tail_of_the_full_one(shift: float) -> None:
    full = time_grid(8, shift=shift)
    assert torch.allclose(time_grid(4, shift=shift, start=float(full[4])), full[4:], atol=1e-6)
    for start in (0.0, 1.5):
        with pytest.raises(ValueError, match="start"):
            time_grid(4, start=start)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_solving_from_a_start_time_lands_on_the_data(solver: str) -> None:
    x0, noise = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    start = 0.3
    x_start = interpolate(x0, noise, torch.full((2,), start))
    out = solve(lambda x, t: noise - x0, x_start, steps=3, solver=solver, start=start)  # type: ignore[arg-type]
    assert torch.allclose(out, x0, atol=1e-5)


def test_train_time_in_unit_interval_and_seeded() -> None:
    a = sample_train_time(1000, generator=torch.Generator().manual_seed(0))
    b = sample_train_time(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.min() > 0 and a.max() < 1
