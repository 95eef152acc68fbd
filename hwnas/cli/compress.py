"""`hwnas export`, `distill`, `quantize`, `compress`: from a search pick to a deployable sub-DiT."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from hwnas.cli._app import main, user_errors
from hwnas.cli._options import CONFIG_HELP, checkpoint_option, config_option, json_option, load_supernet
from hwnas.compress.deploy import FORMATS
from hwnas.compress.settings import DEFAULT_MODE, FINETUNE_STEPS, METHODS, MODES, DistillConfig, Method, Mode, QuantSpec
from hwnas.space import SearchSpace, SubnetConfig, resolve_config

F = TypeVar("F", bound=Callable[..., Any])
_DC, _QS = DistillConfig(), QuantSpec()
_MODE_HELP = "K-DMD (all terms), DMD-only or KD-only (output + feature)."


def _pick(space: SearchSpace, *, run: str | None, pick: str | None, config: str | None) -> SubnetConfig:
    """`--run DIR --pick N|best` or `--config NAME|FILE.json` (exactly one way)."""
    from hwnas.compress import resolve_pick

    if (run is None) == (config is None):
        raise click.UsageError("give --run RUN_DIR (with --pick) or --config NAME|FILE.json, not both")
    if config is not None:
        return resolve_config(space, config)
    assert run is not None
    cfg = resolve_pick(run, pick or "best")
    space.validate(cfg)
    return cfg


def _pick_options(f: F) -> F:
    f = click.option("--config", "config", help=CONFIG_HELP)(f)
    f = click.option("--pick", default="best", show_default=True, help="Row of pareto.csv (0-based) or 'best'.")(f)
    f = click.option("--run", "run", type=click.Path(file_okay=False),
                     help="A search run directory; its supernet checkpoint comes with it (a --checkpoint with "
                          "other content is refused).")(f)
    return checkpoint_option(f)


def _format_option(f: F) -> F:
    return click.option("--format", "formats", multiple=True, metavar="FORMAT[,FORMAT]",
                        help=f"Also write deployable artefacts, each in OUT/<format>/ with MEASURE.md: "
                             f"{', '.join(FORMATS)} (repeat or comma-separate).")(f)


@main.command("export")
@_pick_options
@click.option("--model", "model_dir", type=click.Path(file_okay=False),
              help="A saved sub-DiT (a distilled student, an earlier export) instead of --run or --config.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@_format_option
@click.option("--onnx", "with_onnx", is_flag=True, help="Same as --format onnx.")
@click.option("--palettize-bits", default=4, show_default=True, type=click.IntRange(min=0, max=8),
              help="Also write a copy with k-means palettized weights of this many bits (0: none; "
                   "ONNX: 4 or 8).")
@user_errors
def export_cmd(checkpoint: str | None, run: str | None, pick: str, config: str | None, model_dir: str | None,
               out: str, formats: tuple[str, ...], with_onnx: bool, palettize_bits: int) -> None:
    """Extract a sub-DiT from the supernet as a standalone model (safetensors + JSON), and
    optionally as ONNX, Core ML or ExecuTorch artefacts."""
    from hwnas.compress import from_supernet, load_subdit, run_checkpoint, save_subdit
    from hwnas.compress.deploy import export_artefacts, parse_formats, require_runtimes

    chosen = parse_formats([*formats, *(["onnx"] if with_onnx else [])])
    require_runtimes(chosen)  # before anything loads or is written
    if model_dir is not None:
        if run is not None or config is not None:
            raise click.UsageError("give --model DIR, --run RUN_DIR (with --pick) or --config, one of them")
        sub = load_subdit(model_dir)
        cfg = sub.cfg
    else:
        ckpt = run_checkpoint(run, checkpoint)
        net = load_supernet(ckpt)
        cfg = _pick(net.space, run=run, pick=pick, config=config)
        sub = from_supernet(net, cfg, source=f"{ckpt or 'shipped proxy supernet'}"
                            + (f", search run {run} pick {pick}" if run else ""))
    if model_dir is None or Path(out).resolve() != Path(model_dir).resolve():
        save_subdit(sub, out)
    artefacts = export_artefacts(sub, out, chosen, palettize_bits=palettize_bits or None)
    click.echo(json.dumps({"out": out, "config_id": cfg.id, "describe": cfg.describe(),
                           "params": sum(p.numel() for p in sub.dit.parameters()),
                           "artefacts": {a.format: {str(a.folder / name): size for name, size in a.files.items()}
                                         for a in artefacts}}))


@main.command("distill")
@_pick_options
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--steps", default=_DC.steps, show_default=True, type=click.IntRange(min=1), help="Student updates.")
@click.option("--student-steps", default=_DC.student_steps, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=_DC.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--critic-updates", default=_DC.critic_updates, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=_DC.lr, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Student learning rate (AdamW, constant).")
@click.option("--critic-lr", default=_DC.critic_lr, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Critic (fake score) learning rate.")
@click.option("--beta1", default=_DC.beta1, show_default=True, type=click.FloatRange(min=0, max=1, max_open=True),
              help="AdamW beta1 of student and critic (DMD2 uses 0; beta2 is 0.99).")
@click.option("--cfg-scale", default=_DC.cfg_scale, show_default=True, type=click.FloatRange(min=1),
              help="Classifier-free guidance of the teacher (real score and KD targets).")
@click.option("--mode", type=click.Choice(MODES), default=DEFAULT_MODE, show_default=True, help=_MODE_HELP)
@click.option("--no-feature", is_flag=True, help="Turn the feature-level term off.")
@click.option("--kd-teacher-steps", default=_DC.kd_teacher_steps, show_default=True, type=click.IntRange(min=1))
@click.option("--resume", is_flag=True, help="Continue the distillation in --out where it stopped.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def distill_cmd(checkpoint: str | None, run: str | None, pick: str, config: str | None, out: str, mode: Mode,
                no_feature: bool, resume: bool, quiet: bool, **settings: Any) -> None:
    """Step distillation (DMD, K-DMD or KD) of a sub-DiT against the full supernet (runs under torchrun
    too)."""
    from hwnas.compress import distill, from_supernet, run_checkpoint, terms

    ckpt = run_checkpoint(run, checkpoint)
    net = load_supernet(ckpt)
    cfg = _pick(net.space, run=run, pick=pick, config=config)
    if not resume and (Path(out) / "distill_state.pt").exists():
        raise click.UsageError(f"{out} already holds a distillation; pass --resume or choose another --out")
    dc = terms(mode, DistillConfig(**settings))
    if no_feature:
        dc = replace(dc, feat_weight=0.0)
    click.echo(json.dumps(distill(net, from_supernet(net, cfg), out=out, dc=dc, resume=resume, progress=not quiet)))


def _quant_options(f: F) -> F:
    f = click.option("--side-bits", "side_bits", type=click.Choice(["16", "8"]), default=str(_QS.side_bits),
                     show_default=True,
                     help="Biases, norms and adaLN tables: uint8 on a per-tensor grid, or fp16.")(f)
    f = click.option("--mixed", is_flag=True, help="8 bits for the most sensitive layers (+0.3 average bits).")(f)
    f = click.option("--symmetric/--asymmetric", default=_QS.symmetric, show_default=True,
                     help="rtn without / with zero points.")(f)
    f = click.option("--group", default=_QS.group, show_default=True, type=click.IntRange(min=0),
                     help="rtn: input channels per scale (the most; a layer whose width it does not divide "
                          "takes the largest power of two that does); kmeans: output rows per palette "
                          "(0 = per tensor).")(f)
    return click.option("--method", type=click.Choice(METHODS), default=_QS.method, show_default=True,
                        help="rtn: round-to-nearest in MatMulNBits blocks; kmeans: 16-entry palettes; fit: rtn "
                             "where the blocks fill without padding, palettes elsewhere.")(f)


def _finetune_option(f: F) -> F:
    return click.option("--finetune-steps", default=FINETUNE_STEPS, show_default=True, type=click.IntRange(min=0),
                        help="Self-distillation steps of the stored biases, norms and adaLN tables after "
                             "quantization (0: none).")(f)


def _spec(method: Method, group: int, symmetric: bool, side_bits: str) -> QuantSpec:
    return QuantSpec(method, 4, None if method == "kmeans" and group == 0 else group, symmetric,
                     8 if side_bits == "8" else 16)


@main.command("quantize")
@checkpoint_option
@click.option("--model", "model_dir", type=click.Path(file_okay=False), help="A sub-DiT dir (export/distill output).")
@config_option()
@_quant_options
@_finetune_option
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=2))
@click.option("--steps", default=28, show_default=True, type=click.IntRange(min=1))
@click.option("--cfg-scale", "cfg_scale", default=4.0, show_default=True, type=float)
@click.option("--onnx", "onnx_out", type=click.Path(dir_okay=False),
              help="Write the int4 ONNX model here (rtn: MatMulNBits; kmeans: palette decoder).")
@json_option
@user_errors
def quantize_cmd(checkpoint: str | None, model_dir: str | None, config: str, method: Method, group: int,
                 symmetric: bool, mixed: bool, side_bits: str, finetune_steps: int, n: int, steps: int,
                 cfg_scale: float, onnx_out: str | None, as_json: bool) -> None:
    """Weight-only int4 quantization; accuracy before/after on the quantized weights."""
    from hwnas.compress import from_supernet, load_subdit, quantize_and_score

    if model_dir is not None:
        sub = load_subdit(model_dir)
    else:
        net = load_supernet(checkpoint)
        sub = from_supernet(net, resolve_config(net.space, config))
    spec = _spec(method, group, symmetric, side_bits)
    r = quantize_and_score(sub, spec, mixed=mixed, finetune_steps=finetune_steps, n=n, steps=steps,
                           cfg_scale=cfg_scale, checkpoint=checkpoint, onnx_out=onnx_out)
    click.echo(json.dumps(r, indent=2) if as_json else
               f"{method} g{spec.group} {'sym' if spec.symmetric else 'asym'}{' mixed' if mixed else ''}"
               f"{' side8' if spec.side_bits == 8 else ''}: "
               f"{r['avg_bits']:.3f} bits, {r['bytes']} B vs {r['bytes_fp16']} B fp16; accuracy "
               f"{r['acc_fp32']:.3f} -> {r['acc_quant']:.3f} (n={n}, {steps} steps)")


@main.command("compress")
@_pick_options
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="Default: RUN_DIR/compress/<config_id> (with --run), else runs/compress/<config_id>.")
@click.option("--student", "student", type=click.Path(file_okay=False),
              help="A student `hwnas distill` finished for this pick and checkpoint: score, quantize and export "
                   "it instead of distilling one (its own terms and step count).")
@click.option("--mode", type=click.Choice(MODES), help=f"{_MODE_HELP} [default: {DEFAULT_MODE}]")
@click.option("--distill-steps", type=click.IntRange(min=1), help=f"Student updates. [default: {_DC.steps}]")
@click.option("--student-steps", type=click.IntRange(min=1),
              help="Sampling steps of the student (and of the undistilled sub-DiT it is compared with). "
                   f"[default: {_DC.student_steps}]")
@_quant_options
@_finetune_option
@_format_option
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=2))
@click.option("--resume", is_flag=True, help="Resume the distillation in OUT/student.")
@click.option("--keep-distilled", is_flag=True,
              help="Quantize and export the student even where the undistilled sub-DiT scores better.")
@click.option("--quiet", is_flag=True)
@user_errors
def compress_cmd(checkpoint: str | None, run: str | None, pick: str, config: str | None, out: str | None,
                 student: str | None, mode: Mode | None, distill_steps: int | None, student_steps: int | None,
                 method: Method, group: int, symmetric: bool, mixed: bool, side_bits: str, finetune_steps: int,
                 formats: tuple[str, ...], n: int, resume: bool, keep_distilled: bool, quiet: bool) -> None:
    """Close the loop for one pick: quality at 28 steps, at the student's steps before and after
    distillation and with int4 weights; predicted vs measured latency."""
    from hwnas.compress import compress_pick, run_checkpoint
    from hwnas.compress.deploy import parse_formats, require_runtimes

    chosen = parse_formats(formats)
    require_runtimes(chosen)  # before an hour of distillation, not after
    if student is not None:
        clash = [flag for flag, value in (("--mode", mode), ("--distill-steps", distill_steps),
                                          ("--student-steps", student_steps), ("--resume", resume or None))
                 if value is not None]
        if clash:
            raise click.UsageError(f"--student takes a finished student as it is; drop {', '.join(clash)}")
    ckpt = run_checkpoint(run, checkpoint)
    net = load_supernet(ckpt)
    cfg = _pick(net.space, run=run, pick=pick, config=config)
    target = Path(out) if out else (Path(run) if run else Path("runs")) / "compress" / cfg.id
    dc = DistillConfig(steps=distill_steps or _DC.steps, student_steps=student_steps or _DC.student_steps)
    result = compress_pick(net, cfg, out=target, checkpoint=ckpt, dc=dc, mode=mode or DEFAULT_MODE,
                           student=student, spec=_spec(method, group, symmetric, side_bits), mixed=mixed,
                           finetune_steps=finetune_steps, formats=chosen, n=n, resume=resume,
                           progress=not quiet, keep_distilled=keep_distilled)
    click.echo(json.dumps({"results": str(target / "results.json"), "quality_rows": result["quality_rows"],
                           "shipped": result["shipped"], "latency": result["latency"],
                           "artefacts": result["artefacts"]}, indent=2))
