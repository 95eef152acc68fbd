"""End-to-end latency of a sub-DiT from a LUT. Pure: no I/O (load the table with `load_table`).

    total_ms = steps * passes * step_ms + text_encoder_ms + vae_decoder_ms
    step_ms  = sum over the step's kernels of the LUT median   (optionally a * step_ms + b_ms)

`passes` is 2 under classifier-free guidance (a conditional and an unconditional denoiser
evaluation per step, batch 1 each), 1 for a guidance-distilled model or none. A kernel missing from
the table raises `MissingKernelError`; nothing is silently zero. Each prediction carries its
table's `ErrorModel`, from which `interval`, `upper_ms` and `prob_within` give its uncertainty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal, get_args

from hwnas.latency.interval import ErrorModel, LatencyInterval, check_confidence
from hwnas.latency.kernels import KernelKey, Precision, kernel_counts
from hwnas.latency.table import LatencyTable, Source, TableSource, label_source
from hwnas.space import SearchSpace, SubnetConfig

Guidance = Literal["distilled", "cfg", "none"]
GUIDANCE: tuple[Guidance, ...] = get_args(Guidance)
PASSES: dict[Guidance, int] = {"distilled": 1, "cfg": 2, "none": 1}
"""Denoiser evaluations per step: CFG runs the model with and without the prompt; a guidance-distilled
student (K-DMD's, trained against a CFG teacher) or an unguided model runs it once."""


class MissingKernelError(KeyError):
    """A kernel of the sub-DiT has no entry in the device's LUT."""

    def __init__(self, key: KernelKey, device: str, experiment: str) -> None:
        self.key, self.device, self.experiment = key, device, experiment
        super().__init__(f"kernel {key.describe()} has no entry in the latency table of device {device!r} "
                         f"(experiment {experiment!r}); rebuild or extend the table")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class LatencyPrediction:
    """Predicted latency of one image, in ms. `step_ms_by_kind` splits one denoiser step by kernel kind.

    `source` is the kind of entries summed; `source_label` says the same for people, and says
    "measured on X, running on Y" where the measured entries were timed on another CPU.
    """

    device: str
    experiment: str
    config_id: str
    precision: Precision
    steps: int
    total_ms: float
    step_ms: float
    denoiser_ms: float
    text_encoder_ms: float
    vae_decoder_ms: float
    step_ms_by_kind: dict[str, float] = field(hash=False)
    source: TableSource
    provenance: str
    corrected: bool = False
    source_label: str = ""
    guidance: Guidance = "distilled"
    passes: int = 1
    error: ErrorModel | None = field(default=None, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def _fixed_ms(self) -> float:
        return self.text_encoder_ms + self.vae_decoder_ms

    def _error(self) -> ErrorModel:
        if self.error is None:
            raise ValueError("this prediction carries no error model")
        return self.error

    def interval(self, confidence: float) -> LatencyInterval:
        """The central `confidence` interval of the step and of the image latency."""
        err, c = self._error(), check_confidence(confidence)
        lo, hi = err.ratio((1 - c) / 2), err.ratio((1 + c) / 2)
        return LatencyInterval(confidence=c, step_ms_lo=self.step_ms * lo, step_ms_hi=self.step_ms * hi,
                               latency_ms_lo=self.denoiser_ms * lo + self._fixed_ms,
                               latency_ms_hi=self.denoiser_ms * hi + self._fixed_ms)

    def upper_ms(self, confidence: float) -> float:
        """The image latency this sub-DiT stays under with probability `confidence` (one-sided)."""
        return self.denoiser_ms * self._error().ratio(check_confidence(confidence)) + self._fixed_ms

    def prob_within(self, budget_ms: float) -> float:
        """Probability that one image takes at most `budget_ms`."""
        return self._error().prob_below((budget_ms - self._fixed_ms) / self.denoiser_ms)

    def report(self, confidence: float) -> dict[str, Any]:
        """The prediction as `hwnas predict --json` prints it: totals, the `confidence` interval, the
        error model it comes from, the breakdown by pipeline part and kernel kind, the provenance."""
        iv, err = self.interval(confidence), self._error()
        return {
            "latency_ms": round(self.total_ms, 3), "step_ms": round(self.step_ms, 3), "steps": self.steps,
            "guidance": self.guidance, "passes_per_step": self.passes, "confidence": confidence,
            "step_ms_lo": round(iv.step_ms_lo, 3), "step_ms_hi": round(iv.step_ms_hi, 3),
            "latency_ms_lo": round(iv.latency_ms_lo, 3), "latency_ms_hi": round(iv.latency_ms_hi, 3),
            "interval": {"kind": err.kind, "n": err.n, "log_bias": err.log_bias, "log_sd": err.log_sd,
                         "dof": err.dof, "source": err.source},
            "breakdown": {
                "denoiser_ms": round(self.denoiser_ms, 3),
                "denoiser_step_ms_by_kind": {k: round(v, 3) for k, v in self.step_ms_by_kind.items()},
                "text_encoder_ms": round(self.text_encoder_ms, 3), "vae_decoder_ms": round(self.vae_decoder_ms, 3),
            },
            "source": self.source_label, "provenance": self.provenance, "corrected": self.corrected,
            "device": self.device, "precision": self.precision, "experiment": self.experiment,
            "config_id": self.config_id,
        }

    def lines(self, confidence: float, *, describe: str, device_description: str) -> list[str]:
        """The prediction as `hwnas predict` prints it; `describe` names the sub-DiT."""
        iv = self.interval(confidence)
        return [
            f"device       {self.device}  ({device_description})",
            f"sub-DiT      {describe}  id {self.config_id}, {self.precision}, {self.steps} steps",
            f"latency      {self.total_ms:,.1f} ms  ({self.source_label}); {confidence:.0%} interval "
            f"{iv.latency_ms_lo:,.1f}..{iv.latency_ms_hi:,.1f} ms",
            f"  denoiser   {self.steps} x {self.passes} x {self.step_ms:,.1f} ms = {self.denoiser_ms:,.1f} ms"
            f"  (guidance {self.guidance})" + ("  (corrected)" if self.corrected else ""),
            f"  text enc   {self.text_encoder_ms:,.1f} ms",
            f"  VAE dec    {self.vae_decoder_ms:,.1f} ms",
            *(f"    {kind:12s} {ms:>10,.2f} ms/step" for kind, ms in self.step_ms_by_kind.items()),
            f"source       {self.provenance}",
            f"interval     {self._error().describe(confidence)}",
        ]


def predict_latency_ms(cfg: SubnetConfig, table: LatencyTable, *, steps: int, precision: Precision,
                       space: SearchSpace, correct: bool = False,
                       guidance: Guidance = "distilled") -> LatencyPrediction:
    """Latency of generating one image with `cfg` at `steps` denoising steps (batch 1; `guidance`
    "cfg" doubles the denoiser, see `PASSES`).

    `correct` applies the table's fitted linear correction to the step time (an error when the
    table has none). The VAE decoder latency is scaled by pixel count when the profile gives it
    at another resolution than `space.resolution` (an assumption, linear in pixels).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if guidance not in PASSES:
        raise ValueError(f"guidance must be one of {', '.join(GUIDANCE)}, got {guidance!r}")
    passes = PASSES[guidance]
    if table.meta.experiment != space.name:
        raise ValueError(f"the table is for experiment {table.meta.experiment!r}, the space is {space.name!r}")
    medians = table._median_ms
    by_kind: dict[str, float] = {}
    sources: set[Source] = set()
    for key, count in kernel_counts(cfg, space, precision=precision):
        entry = medians.get(key)
        if entry is None:
            raise MissingKernelError(key, table.device, table.meta.experiment)
        by_kind[key.op.kind] = by_kind.get(key.op.kind, 0.0) + count * entry[0]
        sources.add(entry[1])
    step_ms = sum(by_kind.values())
    if correct:
        if table.meta.correction is None:
            raise ValueError(f"the latency table of device {table.device!r} has no fitted correction")
        step_ms = table.meta.correction.a * step_ms + table.meta.correction.b_ms
    text_ms = table.text_encoder.latency_ms.require(f"{table.device}: pipeline.text_encoder.latency_ms")
    vae = table.vae_decoder
    vae_ms = vae.latency_ms.require(f"{table.device}: pipeline.vae_decoder.latency_ms")
    if vae.resolution and vae.resolution != space.resolution:
        vae_ms *= (space.resolution / vae.resolution) ** 2
    source: TableSource = sources.pop() if len(sources) == 1 else "mixed"
    provenance = table._memo.get(source)
    if provenance is None:
        provenance = table._memo[source] = _provenance(table, source, text_ms=text_ms)
    return LatencyPrediction(
        device=table.device, experiment=space.name, config_id=_config_id(cfg), precision=precision, steps=steps,
        total_ms=steps * passes * step_ms + text_ms + vae_ms, step_ms=step_ms, denoiser_ms=steps * passes * step_ms,
        text_encoder_ms=text_ms, vae_decoder_ms=vae_ms, step_ms_by_kind=by_kind, source=source,
        provenance=provenance, corrected=correct, source_label=label_source(source, table.cpu_note),
        guidance=guidance, passes=passes, error=table.error_model,
    )


def _target_text(target: dict[str, Any]) -> str:
    """"llvm znver4" / "llvm": the target kind and the CPU it was built for, where it names one."""
    return " ".join(str(target[k]) for k in ("kind", "mcpu") if k in target)


@lru_cache(maxsize=65536)
def _config_id(cfg: SubnetConfig) -> str:
    return cfg.id


def _provenance(table: LatencyTable, source: str, *, text_ms: float) -> str:
    meta = table.meta
    if source == "measured":
        what = (f"{table.cpu_note or 'measured'}: TVM {meta.tvm_version} kernels on {meta.device} (target "
                f"{_target_text(meta.target)}, {meta.threads} threads, {meta.date})")
    elif source == "estimated":
        what = f"estimated: roofline transfer from the {meta.device} profile's peaks; {meta.calibration}"
    else:
        what = f"mixed: measured and estimated kernels of {meta.device} ({meta.calibration})"
        if table.cpu_note:
            what += f"; the measured ones {table.cpu_note}"
    parts = (f"VAE decoder: {table.vae_decoder.latency_ms.source}; text encoder "
             f"{text_ms:g} ms: {table.text_encoder.latency_ms.source}")
    return f"denoiser {what}. {parts}"
