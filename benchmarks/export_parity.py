"""Deployable artefacts of one sub-DiT: output parity, size on disk and speed per runtime.

    OMP_NUM_THREADS=1 python benchmarks/export_parity.py [--checkpoint DIR] [--config small | --model DIR]
        [--formats onnx,coreml,executorch] [--rounds 20] [--seed 0] [--out DIR] [--json OUT]

Exports `--config` of the checkpoint (default: the shipped proxy supernet), or the saved sub-DiT
in `--model` (a distilled student, say), with `hwnas export`'s
library call (`hwnas.compress.deploy.export_artefacts`) to every format whose package is
installed; a missing one is listed with the pip line that installs it. Then, on the inputs
`example_inputs(space, seed=--seed)` (x, t, text, text_mask; batch 1):

- parity: max |v_artefact - v_PyTorch| in fp32, for the runtimes that run on this host (ONNX
  Runtime, ExecuTorch). Core ML runs only on macOS/iOS: its row gives the spec and MIL op count
  instead, and the Core ML `torch.jit.trace` frontend is tried too (the error it ends in is
  recorded). The palettized ONNX copy (`model-w4.onnx`) is compared with PyTorch running the same
  palettized weights, since its distance from the fp32 model is the quantization's;
- size: bytes on disk of each artefact (an `.mlpackage` counted whole) beside the fp32 and fp16
  size of the parameters;
- latency: the median over `--rounds` interleaved rounds (each round calls every file that runs
  here once, in turn, after 3 warm-up calls each) with one thread everywhere (onnxruntime intra-op
  1, XNNPACK's thread pool 1, `torch.set_num_threads(1)`); PyTorch eager is timed as a reference.

The summary line: parity per runtime, ExecuTorch / onnxruntime latency, palettized / fp16 Core ML
size. The artefacts go to a temporary directory unless `--out` keeps them. ~15-30 min on the 2
shared cores here (ExecuTorch's lowering dominates).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json

from hwnas.compress import from_supernet, load_subdit
from hwnas.compress.deploy import (
    FORMATS,
    RUNTIMES,
    MissingRuntimeError,
    UnsupportedOpError,
    export_artefacts,
    load_runner,
    parse_formats,
    require_runtimes,
    tree_bytes,
)
from hwnas.compress.deploy_coreml import WEIGHTS
from hwnas.model import StaticDiT, example_inputs
from hwnas.space import resolve_config
from hwnas.train import load_supernet


def _rows(artefacts: list[Any], expected: np.ndarray, runners: dict[str, Any], inputs: tuple[torch.Tensor, ...],
          times: dict[str, float]) -> list[dict[str, Any]]:
    """One row per file. A palettized file's parity is against PyTorch with the same palettized
    weights (measured at export; its distance from the fp32 model is quantization, not export)."""
    rows = []
    for a in artefacts:
        palettized = a.details.get("palettized", {})
        for name, size in a.files.items():
            key = _key(a.format, name, a.details)
            row: dict[str, Any] = {
                "format": a.format, "file": name, "bytes": size, "runtime": RUNTIMES[a.format].label,
                "precision": palettized["precision"] if name == palettized.get("file") else a.details["precision"]}
            if name == palettized.get("file") and "parity_max_abs_vs_dequantized" in palettized:
                row["parity_max_abs"] = palettized["parity_max_abs_vs_dequantized"]
                row["parity_reference"] = "PyTorch, the same palettized weights"
            elif key in runners:
                row["parity_max_abs"] = float(np.abs(runners[key](inputs) - expected).max())
                row["parity_reference"] = "PyTorch, fp32"
            if key in times:
                row["median_ms"] = times[key]
            if a.format == "coreml":
                row["weights_bytes"] = tree_bytes(a.folder / name / WEIGHTS)
                row["mil_ops"] = sum(a.details["mil_ops"].values())
                row["mil_op_types"] = len(a.details["mil_ops"])
            rows.append(row)
    return rows


def _key(fmt: str, name: str, details: dict[str, Any]) -> str:
    """The timing key of one file: its format for the format's main artefact, else `format/file`."""
    return fmt if name == details["artefacts"][0] else f"{fmt}/{name}"


def _time_all(calls: dict[str, Any], inputs: tuple[torch.Tensor, ...], *, rounds: int) -> dict[str, float]:
    """Median ms per call, interleaved: every round calls each runtime once."""
    for call in calls.values():
        for _ in range(3):
            call(inputs)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call(inputs)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def _coreml_trace(model: StaticDiT, folder: Path) -> str:
    """What the Core ML TorchScript frontend does with this sub-DiT (`ok` or the error)."""
    from hwnas.compress.deploy_coreml import export_coreml

    try:
        folder.mkdir(parents=True, exist_ok=True)
        export_coreml(model, folder, palettize_bits=None, frontend="trace")
    except UnsupportedOpError as exc:
        return str(exc)
    return "ok"


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--checkpoint", default=None, help="supernet checkpoint dir (default: the shipped proxy)")
    ap.add_argument("--config", default="small", help="preset, smallest/largest, config id, JSON or file")
    ap.add_argument("--model", help="a saved sub-DiT (hwnas export / distill output, e.g. a distilled student) "
                                    "instead of --config of --checkpoint")
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma list (default: %(default)s)")
    ap.add_argument("--rounds", type=positive_int, default=20, help="timed rounds (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="keep the artefacts here (default: a temp dir)")
    add_seed(ap, controls="the inputs x, t, text and text_mask")
    add_json(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with user_input():
        formats = parse_formats([args.formats])
        if args.model:
            sub = load_subdit(args.model)
        else:
            net = load_supernet(args.checkpoint)
            sub = from_supernet(net, resolve_config(net.space, args.config),
                                source=f"{args.checkpoint or 'shipped proxy supernet'}")
    skipped = {}
    for fmt in formats:
        try:
            require_runtimes([fmt])
        except MissingRuntimeError as exc:
            skipped[fmt] = str(exc)
    chosen = [f for f in formats if f not in skipped]
    cfg = sub.cfg
    params = sum(p.numel() for p in sub.dit.parameters())
    inputs = example_inputs(sub.space, seed=args.seed)
    with torch.no_grad():
        expected = sub.dit(*inputs).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        t0 = time.perf_counter()
        artefacts = export_artefacts(sub, out, chosen)
        export_s = time.perf_counter() - t0
        runners = {_key(a.format, name, a.details): load_runner(a.format, a.folder / name, threads=1)
                   for a in artefacts if RUNTIMES[a.format].runs_here for name in a.details["artefacts"]}
        with torch.no_grad():
            times = _time_all({"pytorch": lambda x: sub.dit(*x), **runners}, inputs, rounds=args.rounds)
        rows = _rows(artefacts, expected, runners, inputs, times)
        trace = _coreml_trace(sub.dit, Path(tmp) / "trace") if "coreml" in chosen else None

    source = f"{sub.space.name}, {args.model}" if args.model else sub.space.name
    print(f"{cfg.id} ({cfg.describe()}) of {source}: {params:,} parameters, fp32 {4 * params:,} B, "
          f"fp16 {2 * params:,} B; export {export_s:.0f} s; PyTorch eager {times['pytorch']:.2f} ms")
    print(f"{'file':<26} {'runtime':<20} {'precision':<9} {'bytes':>10} {'weights B':>10} {'max |diff|':>11} "
          f"{'median ms':>10}")
    for r in rows:
        diff = f"{r['parity_max_abs']:.2e}" if "parity_max_abs" in r else "n/a"
        ms = f"{r['median_ms']:.2f}" if "median_ms" in r else "n/a"
        weights = f"{r['weights_bytes']:,}" if "weights_bytes" in r else ""
        print(f"{r['format'] + '/' + r['file']:<26} {r['runtime']:<20} {r['precision']:<9} {r['bytes']:>10,} "
              f"{weights:>10} {diff:>11} {ms:>10}")
    for fmt, why in skipped.items():
        print(f"{fmt}: skipped: {why}")
    if trace is not None:
        print(f"coreml torch.jit.trace frontend: {trace}")

    parts = [f"{r['format']}/{r['file']} max|diff| {r['parity_max_abs']:.1e}" for r in rows if "parity_max_abs" in r]
    if "executorch" in times and "onnx" in times:
        parts.append(f"executorch/onnxruntime latency {times['executorch'] / times['onnx']:.2f}x "
                     f"({times['executorch']:.2f} vs {times['onnx']:.2f} ms, 1 thread)")
    coreml = next((a for a in artefacts if a.format == "coreml"), None)
    if coreml is not None and "palettized" in coreml.details:
        p = coreml.details["palettized"]
        parts.append(f"coreml w{p['nbits']}/fp16 weights {p['weights_bytes'] / p['weights_bytes_fp16']:.2f}x "
                     f"({p['tensors_palettized']} tensors palettized)")
    parts += [f"{fmt} skipped" for fmt in skipped]
    print_summary(parts)
    write_json(args.json_out, {
        "config": cfg.to_dict(), "config_id": cfg.id, "experiment": sub.space.name, "model": args.model,
        "params": params,
        "seed": args.seed, "rounds": args.rounds, "threads": 1, "export_s": export_s, "median_ms": times,
        "rows": rows, "skipped": skipped, "coreml_trace_frontend": trace, "torch": torch.__version__,
        "versions": {a.format: a.details["package_version"] for a in artefacts},
        "details": {a.format: {k: v for k, v in a.details.items() if k != "config"} for a in artefacts}})


if __name__ == "__main__":
    main()
