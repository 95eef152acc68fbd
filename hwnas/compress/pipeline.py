"""Close the loop for one search pick: extract -> evaluate -> distill -> int4 -> ONNX -> measure.

Writes `RUN_DIR/compress/<config_id>/` with the sub-DiT (`subdit/`), the distilled student
(`student/`, unless one distilled earlier is passed in), the int4 ONNX model (`int4.onnx`), the
fp32 ONNX model (`fp32.onnx`) and `results.json`, which `hwnas report` renders:

    {"config_id", "quality_rows": [{"stage", "metric", "value", "n", "steps", "source"}],
     "shipped": {"model", "why"},
     "latency": {"device", "precision", "predicted_ms", "measured_ms", "how"}, ...}

Quality rows: the sub-DiT at 28 steps with CFG (56 DiT evaluations per image), the same sub-DiT
at the student's K steps without CFG (before distillation, K evaluations), the student (K-DMD,
DMD or KD, by its terms) at K steps without CFG, and the better of those two (the one shipped)
with its int4 weights (dequantized, as the int4 runtime runs them). Latency: the host LUT's
prediction (`latency_tables/host/<experiment>.csv`) against the TVM-compiled whole step
(`hwnas.latency.bench.time_subnet_tvm`); where either is missing the field is null and `how` says
why, and onnxruntime fp32/int4 timings are reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwnas.compress.deploy import export_artefacts
from hwnas.compress.extract import SubDiT, from_supernet, save_subdit
from hwnas.compress.kdmd import distill, load_student
from hwnas.compress.onnx_int4 import check_parity, export_int4_onnx, time_onnx
from hwnas.compress.quant import (
    dequantized_copy,
    finetune_biases_norms,
    layer_sensitivity,
    mixed_bits,
    quantize_model,
)
from hwnas.compress.settings import DEFAULT_MODE, FINETUNE_STEPS, DistillConfig, Mode, QuantSpec, mode_name, terms
from hwnas.io import atomic_write_json
from hwnas.metrics.evaluate import Metric, evaluate
from hwnas.model import example_inputs, export_onnx
from hwnas.paths import REPO_ROOT
from hwnas.space import SubnetConfig
from hwnas.train.supernet import Supernet

if TYPE_CHECKING:  # hwnas.latency is imported where used
    from hwnas.compress.deploy import Format
    from hwnas.latency import Precision

_METRICS: tuple[Metric, ...] = ("compositional", "fd_ref")
"""The quality rows of every stage, in `_scores`' order."""


def quality_row(model: Any, cfg: SubnetConfig, *, stage: str, metric: Metric, n: int, steps: int,
                cfg_scale: float, checkpoint: str | Path | None, seed: int = 0) -> dict[str, Any] | None:
    """One `quality_rows` entry, or None where the metric is unavailable (fd_ref weights missing)."""
    try:
        res = evaluate(model, cfg, metric=metric, n=n, steps=steps, cfg_scale=cfg_scale, seed=seed,
                       checkpoint=checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        if metric == "fd_ref":
            return None
        raise ValueError(f"{stage}: {exc}") from None
    evals = steps * (2 if cfg_scale != 1.0 else 1)
    return {"stage": stage, "metric": metric, "value": float(res["value"]), "n": n, "steps": steps,
            "source": f"{res['source']}; {evals} DiT evaluations per image"}


def quantize_subdit(model: SubDiT, spec: QuantSpec, *, mixed: bool = False, extra_bits: float = 0.3,
                    seed: int = 0) -> tuple[SubDiT, Any]:
    """int4 (or mixed 4/8-bit by measured sensitivity) copy of `model`; returns (model, QuantizedModel)."""
    dit = model.dit.eval()
    bits = None
    if mixed:
        inputs = example_inputs(model.space, batch=8, seed=seed)
        sens = layer_sensitivity(dit, spec, lambda m: m(*inputs))
        bits = mixed_bits(dit, spec, sens, extra_bits=extra_bits)
    q = quantize_model(dit, spec, bits=bits)
    return model.with_dit(dequantized_copy(dit, q).eval(), quant=q.summary()), q


def quantize_and_score(sub: SubDiT, spec: QuantSpec, *, mixed: bool = False, finetune_steps: int = FINETUNE_STEPS,
                       n: int = 100, steps: int = 28, cfg_scale: float = 4.0, checkpoint: str | Path | None = None,
                       onnx_out: str | Path | None = None) -> dict[str, Any]:
    """Quantize `sub` (`quantize_subdit`), optionally fine-tune its biases and norms against the fp32
    sub-DiT, and score both on the same prompts and noises (compositional accuracy); with `onnx_out`,
    also export the int4 ONNX model (MatMulNBits and palette decoders) and check its parity. Returns
    the summary `hwnas quantize` prints."""
    qsub, q = quantize_subdit(sub, spec, mixed=mixed)
    if finetune_steps:
        finetune_biases_norms(qsub.dit, sub.dit, lambda i: example_inputs(sub.space, batch=8, seed=1000 + i),
                              steps=finetune_steps, side_bits=spec.side_bits)
    kw: dict[str, Any] = dict(metric="compositional", n=n, steps=steps, cfg_scale=cfg_scale, checkpoint=checkpoint)
    before, after = quality_row(sub, sub.cfg, stage="fp32", **kw), quality_row(qsub, sub.cfg, stage="quantized", **kw)
    assert before is not None and after is not None  # compositional is always available
    result = {"config_id": sub.cfg.id, "method": spec.method, "group": spec.group, "symmetric": spec.symmetric,
              "mixed": mixed, "finetune_steps": finetune_steps, **q.summary(), "acc_fp32": before["value"],
              "acc_quant": after["value"], "source": after["source"], "n": n, "steps": steps, "cfg_scale": cfg_scale}
    if onnx_out is not None:
        result["onnx"] = export_int4_onnx(qsub.dit, q, onnx_out)  # its biases and norms, fine-tuned or not
        result["parity"] = check_parity(onnx_out, qsub.dit)
    return result


def measure_latency(model: SubDiT, *, experiment: str, precision: Precision = "fp32") -> dict[str, Any]:
    """Host LUT prediction vs TVM-measured step latency (ms, batch 1); nulls with reasons. The host
    profile and LUT are the shipped ones (under the hwnas checkout, whatever the working directory)."""
    how: list[str] = []
    predicted = measured = None
    profiles, tables = REPO_ROOT / "device_profiles", REPO_ROOT / "latency_tables"
    try:
        from hwnas.latency import load_table, predict_latency_ms

        table = load_table("host", experiment, table_dir=tables, profile_dir=profiles)
        predicted = predict_latency_ms(model.cfg, table, steps=1, precision=precision,
                                       space=model.space).step_ms
        how.append(f"predicted: host LUT latency_tables/host/{experiment}.csv, {precision}, one step")
    except Exception as exc:  # missing table or kernel: say so, never invent a number
        how.append(f"predicted: unavailable ({type(exc).__name__}: {str(exc)[:160]})")
    try:
        from hwnas.latency import load_profile
        from hwnas.latency.bench import time_subnet_tvm

        timing = time_subnet_tvm(model.dit, profile=load_profile("host", profile_dir=profiles), batch=1)
        measured = float(timing.median_ms)
        how.append(f"measured: TVM-compiled whole step on host (median of {timing.n}), fp32")
    except Exception as exc:
        how.append(f"measured (TVM): unavailable ({type(exc).__name__}: {str(exc)[:160]})")
    return {"device": "host", "precision": precision, "predicted_ms": predicted, "measured_ms": measured,
            "how": "; ".join(how)}


def compress_pick(net: Supernet, cfg: SubnetConfig, *, out: str | Path, checkpoint: str | Path | None = None,
                  dc: DistillConfig | None = None, mode: Mode = DEFAULT_MODE, student: str | Path | None = None,
                  spec: QuantSpec | None = None, mixed: bool = False, finetune_steps: int = FINETUNE_STEPS,
                  formats: Sequence[Format] = (), n: int = 100, teacher_steps: int = 28,
                  cfg_scale: float = 4.0, resume: bool = False, progress: bool = True, threads: int = 1,
                  keep_distilled: bool = False) -> dict[str, Any]:
    """Run the whole compression stage for `cfg`; write and return `out/results.json`'s content.

    The student is distilled here with `mode`'s terms (`dc` for the rest), or is the one an earlier
    `hwnas distill` left in `student` (its own terms and step count; `dc` unused). The undistilled
    sub-DiT and the student are scored at the same steps and DiT evaluations (CFG 1); the better of
    the two (compositional accuracy, then fd_ref) is the one quantized and exported, unless
    `keep_distilled`. `results.json` says which was shipped and why. `finetune_steps` trains the
    quantized model's biases and norms against the shipped one's output. `formats` also writes the
    shipped model's deployable artefacts (`out/<format>/`, `hwnas.compress.deploy`)."""
    out = Path(out)
    start = time.perf_counter()
    spec = spec or QuantSpec()
    if student is not None:
        distilled, summary = load_student(student, net, cfg)
        few, name = int(summary["student_steps"]), str(summary["mode"])
    else:
        dc = terms(mode, dc)
        distilled, few, name = from_supernet(net, cfg), dc.student_steps, mode_name(dc.term_names())
        summary = {**distill(net, distilled, out=out / "student", dc=dc, resume=resume, progress=progress),
                   "mode": name}
    sub = from_supernet(net, cfg, source=f"extracted from {checkpoint or 'the shipped proxy supernet'}")
    save_subdit(sub, out / "subdit")
    rows: list[dict[str, Any] | None] = []
    for metric in _METRICS:
        rows.append(quality_row(sub, cfg, stage=f"teacher {teacher_steps} steps", metric=metric, n=n,
                                steps=teacher_steps, cfg_scale=cfg_scale, checkpoint=checkpoint))
        rows.append(quality_row(sub, cfg, stage=f"student {few} steps (before distillation)", metric=metric, n=n,
                                steps=few, cfg_scale=1.0, checkpoint=checkpoint))
    for metric in _METRICS:
        rows.append(quality_row(distilled, cfg, stage=f"{name} {few} steps", metric=metric, n=n, steps=few,
                                cfg_scale=1.0, checkpoint=checkpoint))
    before = _scores(rows, f"student {few} steps (before distillation)")
    after = _scores(rows, f"{name} {few} steps")
    distilled_wins = keep_distilled or after >= before
    shipped, shipped_name = (distilled, name) if distilled_wins else (sub, "undistilled")
    why = ("kept on request (keep_distilled)" if keep_distilled else
           f"at {few} steps CFG 1 (compositional, then fd_ref): {name} {after[0]:.3f} / {-after[1]:.1f}, "
           f"undistilled {before[0]:.3f} / {-before[1]:.1f}")
    quant_model, q = quantize_subdit(shipped, spec, mixed=mixed)
    if finetune_steps:
        finetune_biases_norms(quant_model.dit, shipped.dit,
                              lambda i: example_inputs(shipped.space, batch=8, seed=1000 + i), steps=finetune_steps,
                              side_bits=spec.side_bits)
    for metric in _METRICS:
        rows.append(quality_row(quant_model, cfg, stage=f"{shipped_name} {few} steps + int4", metric=metric, n=n,
                                steps=few, cfg_scale=1.0, checkpoint=checkpoint))
    int4 = export_int4_onnx(quant_model.dit, q, out / "int4.onnx")
    parity = check_parity(out / "int4.onnx", quant_model.dit, threads=threads)
    export_onnx(shipped.dit, out / "fp32.onnx")
    ort_fp32 = time_onnx(out / "fp32.onnx", shipped.dit, threads=threads)
    ort_int4 = time_onnx(out / "int4.onnx", shipped.dit, threads=threads)
    artefacts = export_artefacts(shipped, out, formats) if formats else []
    result = {
        "config_id": cfg.id, "config": cfg.to_dict(), "describe": cfg.describe(),
        "quality_rows": [r for r in rows if r is not None],
        "shipped": {"model": shipped_name, "why": why},
        "latency": measure_latency(shipped, experiment=net.space.name),
        "runtime": {"onnxruntime_fp32": ort_fp32, "onnxruntime_int4": ort_int4,
                    "int4_over_fp32": ort_int4["median_ms"] / ort_fp32["median_ms"], "parity": parity,
                    "int4_file_bytes": int4["file_bytes"], "fp32_file_bytes": (out / "fp32.onnx").stat().st_size},
        "quant": {**q.summary(), "method": spec.method, "group": spec.group, "symmetric": spec.symmetric,
                  "mixed": mixed, "finetune_steps": finetune_steps},
        "artefacts": {a.format: {str(a.folder / name): size for name, size in a.files.items()} for a in artefacts},
        "distill": summary, "wall_s": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(out / "results.json", result, sort_keys=True)
    return result


def _scores(rows: list[dict[str, Any] | None], stage: str) -> tuple[float, float]:
    """(compositional, -fd_ref) of `stage`, for comparing two models; a missing fd_ref counts 0."""
    values = {r["metric"]: r["value"] for r in rows if r is not None and r["stage"] == stage}
    return (round(values["compositional"], 6), -round(values.get("fd_ref", 0.0), 3))
