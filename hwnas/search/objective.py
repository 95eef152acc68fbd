"""The two objectives of a trial: predicted latency (LUT, cheap) and proxy quality (val loss, cached).

A trial's parameters are the search-space choices, named `<stage>.<choice>` (e.g. `down.width`)
so that they read well in optuna-dashboard. Every stage with a local-attention option always
suggests a radius, so the search space is fixed (what NSGA-II and GP want); the radius is ignored
where the chosen attention has no local branch, and configs are identified by `SubnetConfig.id`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, cast

import optuna

from hwnas.latency import Guidance, LatencyPrediction, LatencyTable, Precision, predict_latency_ms
from hwnas.search.constraints import Bounds, footprint
from hwnas.search.study import TrialFailed
from hwnas.space import LOCAL_ATTNS, STAGES, SearchSpace, Stage, StageConfig, SubnetConfig


def _param_choices(space: SearchSpace) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for stage in STAGES:
        ch = space.stages[stage]
        out[f"{stage}.width"] = list(ch.width)
        out[f"{stage}.depth"] = list(ch.depth)
        out[f"{stage}.ffn_ratio"] = list(ch.ffn_ratio)
        if len(ch.attn) > 1:
            out[f"{stage}.attn"] = list(ch.attn)
        if ch.radius and any(a in LOCAL_ATTNS for a in ch.attn):
            out[f"{stage}.radius"] = list(ch.radius)
    return out


def suggest_config(trial: optuna.Trial, space: SearchSpace) -> SubnetConfig:
    """Ask `trial` for every choice of `space` and build the sub-DiT."""
    params = {name: trial.suggest_categorical(name, choices) for name, choices in _param_choices(space).items()}
    return config_from_params(params, space)


def config_from_params(params: dict[str, Any], space: SearchSpace) -> SubnetConfig:
    """The sub-DiT that trial parameters `params` describe (inverse of `params_from_config`)."""
    stages = {}
    for stage in STAGES:
        ch = space.stages[stage]
        attn = params.get(f"{stage}.attn", ch.attn[0])
        radius = int(params.get(f"{stage}.radius", min(ch.radius, default=0))) if attn in LOCAL_ATTNS else 0
        stages[stage] = StageConfig(width=float(params[f"{stage}.width"]), depth=int(params[f"{stage}.depth"]),
                                    ffn_ratio=int(params[f"{stage}.ffn_ratio"]), attn=attn, radius=radius)
    return SubnetConfig(**stages)


def params_from_config(cfg: SubnetConfig, space: SearchSpace) -> dict[str, Any]:
    """Trial parameters for `cfg` (for `study.enqueue_trial`); radius defaults to the smallest choice."""
    space.validate(cfg)
    out: dict[str, Any] = {}
    for name in _param_choices(space):
        prefix, attr = name.split(".")
        stage = cast(Stage, prefix)  # `_param_choices` names are "<stage>.<attribute>"
        value = getattr(cfg.stage(stage), attr)
        if attr == "radius" and value == 0:
            value = min(space.stages[stage].radius)
        out[name] = value
    return out


def same_choices(a: SearchSpace, b: SearchSpace) -> bool:
    """Do two experiments offer identical choices (so a proxy can stand in for the other's quality)?"""
    keys = ("width", "depth", "ffn_ratio", "attn", "radius")
    return all(getattr(a.stages[s], k) == getattr(b.stages[s], k) for s in STAGES for k in keys)


@dataclass
class LatencyModel:
    """Predicted end-to-end latency on one device (LUT); counts the CPU time spent predicting."""

    table: LatencyTable
    space: SearchSpace
    steps: int
    precision: Precision
    guidance: Guidance = "distilled"
    cpu_s: float = 0.0
    calls: int = 0

    def __call__(self, cfg: SubnetConfig) -> LatencyPrediction:
        start = time.process_time()
        pred = predict_latency_ms(cfg, self.table, steps=self.steps, precision=self.precision, space=self.space,
                                  guidance=self.guidance)
        self.cpu_s += time.process_time() - start
        self.calls += 1
        return pred


@dataclass
class QualityModel:
    """Proxy quality of a sub-DiT: `val_loss` of the supernet on a fixed validation set (lower is better).

    Results are cached by `SubnetConfig.id`; `seed_cache` fills the cache from earlier trials (a
    resumed study, other workers). `cpu_s` counts the process CPU seconds of real evaluations.
    """

    net: Any  # hwnas.train.Supernet
    val: Any  # hwnas.metrics.val_loss.ValSet
    cache: dict[str, float] = field(default_factory=dict)
    cpu_s: float = 0.0
    evaluations: int = 0
    hits: int = 0

    def __call__(self, cfg: SubnetConfig) -> tuple[float, bool]:
        """(val loss, whether it came from the cache)."""
        from hwnas.metrics.val_loss import val_loss

        key = cfg.id
        if key in self.cache:
            self.hits += 1
            return self.cache[key], True
        start = time.process_time()
        value = val_loss(self.net, cfg, self.val)
        self.cpu_s += time.process_time() - start
        self.evaluations += 1
        self.cache[key] = value
        return value, False

    def seed_cache(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        for t in trials:
            a = t.user_attrs.get("hwnas", {})
            q, cid = a.get("quality"), a.get("config_id")
            if cid is not None and isinstance(q, (int, float)) and math.isfinite(q):
                self.cache.setdefault(cid, float(q))


def run_trial(trial: optuna.Trial, *, space: SearchSpace, latency: LatencyModel, quality: QualityModel,
              budget_ms: float, confidence: float | None = None, bounds: Bounds | None = None) -> tuple[float, float]:
    """One trial: latency first (constraint), quality only for sub-DiTs within the budget and `bounds`.

    With `confidence`, the constraint is on the latency's one-sided `confidence` upper bound
    (`LatencyPrediction.upper_ms`), not on the point prediction; None constrains the point.

    Returns the objective values (quality, latency_ms). A sub-DiT over the budget is infeasible
    whatever its quality, so its val loss is not computed and its quality objective is +inf (the
    constrained samplers rank infeasible trials by their violation alone).

    Raises `TrialFailed` (the trial fails with that reason) where the latency or the quality is not
    a finite number.

    `bounds` (parameters, size, peak memory at the latency model's precision) are further constraints,
    each `value / bound - 1` (`hwnas.search.constraints`); the trial records its footprint either way.
    """
    cpu0 = latency.cpu_s  # before suggesting: a sampler may predict latencies to propose (FeasibleRandomSampler)
    cfg = suggest_config(trial, space)
    pred = latency(cfg)
    bound_ms = pred.total_ms if confidence is None else pred.upper_ms(confidence)
    if not (math.isfinite(pred.total_ms) and math.isfinite(bound_ms)):
        raise TrialFailed(f"latency of {cfg.id} is {pred.total_ms} ms (upper bound {bound_ms} ms): "
                          f"the latency table gives a non-finite time")
    fp, bounds = footprint(cfg, space, precision=latency.precision), bounds or Bounds()
    feasible = bound_ms <= budget_ms and fp.within(bounds)
    trial.set_constraint("latency_over_budget_ms", bound_ms - budget_ms)
    for name, value in fp.violations(bounds).items():
        trial.set_constraint(name, value)
    attrs: dict[str, Any] = {
        "config_id": cfg.id, "config_json": cfg.to_json(), "describe": cfg.describe(),
        "latency_ms": pred.total_ms, "latency_source": pred.source_label, "step_ms": pred.step_ms,
        "latency_ms_hi": bound_ms, "p_within_budget": pred.prob_within(budget_ms),
        "denoiser_ms": pred.denoiser_ms, "text_encoder_ms": pred.text_encoder_ms,
        "vae_decoder_ms": pred.vae_decoder_ms, "step_ms_by_kind": pred.step_ms_by_kind,
        "latency_cpu_s": latency.cpu_s - cpu0, "feasible": feasible,
        "params": fp.params, "size_bytes": fp.size_bytes, "memory_bytes": fp.memory_bytes,
    }
    value = math.inf
    if feasible:
        cpu1 = quality.cpu_s
        value, cached = quality(cfg)
        if not math.isfinite(value):
            raise TrialFailed(f"val loss of {cfg.id} is {value}: the supernet's output is not finite for this sub-DiT")
        attrs.update(quality=value, quality_cached=cached, quality_cpu_s=quality.cpu_s - cpu1)
    else:
        attrs.update(quality=None, quality_cached=False, quality_cpu_s=0.0)
    trial.set_user_attr("hwnas", attrs)  # one attribute: one commit per trial, not one per field
    return value, pred.total_ms
