"""A tiny, real search environment for tests: a 16x16 supernet trained 2 steps, its estimated pixel8 LUT.

Imported by tests/search/conftest.py and tests/report/conftest.py (not a conftest itself so both can share it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tiny_space import TINY_EXPERIMENT  # tests/ is on sys.path via the root conftest

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "device_profiles"

# tiny-16 has widths 0.5 and 1.0 only: the presets `small` and `full` exist, `tiny` (0.375) does not.


@dataclass(frozen=True)
class TinyEnv:
    experiment: Path
    checkpoint: Path
    tables: Path
    fastest_ms: float
    largest_ms: float
    """Both one-sided 90% upper bounds, as the search judges feasibility by default."""

    @property
    def budget_ms(self) -> float:
        """Between the fastest and the largest sub-DiT: some trials fit, some do not."""
        return self.fastest_ms + 0.25 * (self.largest_ms - self.fastest_ms)

    def settings(self, **overrides: object):  # -> SearchSettings
        from hwnas.search import SearchSettings

        base = dict(device="pixel8", budget_ms=self.budget_ms, experiment=str(self.experiment),
                    checkpoint=str(self.checkpoint), table_dir=str(self.tables), profile_dir=str(PROFILES),
                    n_trials=12, population_size=4, val_images=8, sample_steps=2, sample_prompts=2, max_grids=2)
        base.update(overrides)
        return SearchSettings(**base)  # type: ignore[arg-type]

    def cli_args(self, *, budget_ms: float | None = None) -> list[str]:
        return ["--device", "pixel8", "--budget", f"{budget_ms or self.budget_ms:.3f}ms",
                "--experiment", str(self.experiment), "--checkpoint", str(self.checkpoint),
                "--tables", str(self.tables), "--profiles", str(PROFILES)]


def make_tiny_env(root: Path) -> TinyEnv:
    import torch

    from hwnas.latency import (
        build_estimated_table,
        default_params,
        load_profile,
        predict_latency_ms,
        write_table,
    )
    from hwnas.space import load_space
    from hwnas.train import train

    root.mkdir(parents=True, exist_ok=True)
    exp = root / "tiny-16.toml"
    exp.write_text(TINY_EXPERIMENT)
    torch.set_num_threads(1)
    train(exp, out=root / "ckpt", steps=2, progress=False)
    space = load_space(exp)
    prof = load_profile("pixel8", profile_dir=PROFILES)
    table = build_estimated_table(prof, space, default_params(prof), experiment_path=str(exp))
    write_table(table, table_dir=root / "tables")
    # the search constrains the one-sided 90% upper bound (its default confidence)
    fast = predict_latency_ms(space.smallest(), table, steps=4, precision="fp16", space=space).upper_ms(0.9)
    large = predict_latency_ms(space.largest(), table, steps=4, precision="fp16", space=space).upper_ms(0.9)
    return TinyEnv(experiment=exp, checkpoint=root / "ckpt", tables=root / "tables", fastest_ms=fast,
                   largest_ms=large)
