"""Deployable artefacts of a sub-DiT, one folder per runtime: ONNX (onnxruntime), Core ML
(`.mlpackage`, coremltools) and ExecuTorch (`.pte`, XNNPACK delegate).

`export_artefacts(sub, out, formats)` writes `out/<format>/` for each format, each folder whole or
not at all (`hwnas.io.atomic_directory`), with `MEASURE.md` (how to time it on a phone and the
`hwnas lut calibrate` CSV row to fill in) and `artefact.json` (inputs, outputs, files and sizes,
what the converter reported). The graphs take `(x, t, text, text_mask)` of the shapes
`hwnas.model.example_inputs` gives (batch fixed at export) and return the velocity `v`.

Before anything is written, every format's package is imported: a missing one raises
`MissingRuntimeError` naming the pip extra. A converter that cannot express an op raises
`UnsupportedOpError` naming the op and the runtime.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from hwnas.io import atomic_directory

if TYPE_CHECKING:  # torch is imported where used: the CLI reads FORMATS without it
    import numpy as np
    import torch

    from hwnas.compress.extract import SubDiT
    from hwnas.model import StaticDiT

Format = Literal["onnx", "coreml", "executorch"]
FORMATS: tuple[Format, ...] = get_args(Format)
Runner = Callable[[Sequence["torch.Tensor"]], "np.ndarray"]
"""Runs an artefact on this host: `(x, t, text, text_mask)` in, `v (B, C, H, W)` float32 out."""


@dataclass(frozen=True)
class Runtime:
    """What a format needs and how it is called: `module` is imported, `extra` is the pip extra
    (`pip install 'hwnas[<extra>]'`) that installs it (None: a dependency of hwnas itself)."""

    label: str
    module: str
    extra: str | None
    file: str
    runs_here: bool


RUNTIMES: dict[Format, Runtime] = {
    "onnx": Runtime("ONNX Runtime", "onnxruntime", None, "model.onnx", runs_here=True),
    "coreml": Runtime("Core ML", "coremltools", "coreml", "model.mlpackage", runs_here=False),
    "executorch": Runtime("ExecuTorch XNNPACK", "executorch", "executorch", "model.pte", runs_here=True),
}


class MissingRuntimeError(ValueError):
    """A format's package is not installed; the message names the pip extra that installs it."""


class UnsupportedOpError(ValueError):
    """A converter cannot express an op of the sub-DiT; the message names the op and the runtime."""


@dataclass(frozen=True)
class Artefact:
    """One written folder: `files` maps each artefact (a file or a `.mlpackage` folder, relative to
    `folder`) to its size in bytes; `details` is what `artefact.json` holds."""

    format: Format
    folder: Path
    files: dict[str, int]
    details: dict[str, Any]


def parse_formats(values: Iterable[str]) -> tuple[Format, ...]:
    """`["coreml,onnx", "executorch"]` -> `("coreml", "onnx", "executorch")`: comma lists and
    repeats, in order, without duplicates. Raises ValueError quoting an unknown name."""
    out: list[Format] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if name not in FORMATS:
                raise ValueError(f"unknown export format {name!r}; choose from {', '.join(FORMATS)}")
            if name not in out:
                out.append(name)
    return tuple(out)


def require_runtimes(formats: Iterable[Format]) -> dict[Format, str]:
    """Import each format's package; returns their versions. Raises `MissingRuntimeError` with the
    install line for the first one missing."""
    versions: dict[Format, str] = {}
    for fmt in formats:
        rt = RUNTIMES[fmt]
        try:
            module = importlib.import_module(rt.module)
        except ImportError as exc:
            how = f"pip install 'hwnas[{rt.extra}]'" if rt.extra else f"pip install {rt.module} (a dependency of hwnas)"
            raise MissingRuntimeError(f"--format {fmt} needs {rt.module}, which cannot be imported ({exc.msg}): "
                                      f"{how}") from None
        try:
            versions[fmt] = importlib.metadata.version(rt.module)
        except importlib.metadata.PackageNotFoundError:  # importable but not installed as a distribution
            versions[fmt] = str(getattr(module, "__version__", "unknown"))
    return versions


def export_artefacts(sub: SubDiT, out: str | Path, formats: Sequence[Format], *, batch: int = 1,
                     palettize_bits: int | None = 4) -> list[Artefact]:
    """Write `out/<format>/` for each of `formats` (see the module docstring); returns them in order.

    `palettize_bits` adds a copy with k-means palettized weights (`None`: none): Core ML's through
    coremltools, ONNX's (4 or 8 bits) through `hwnas.compress.onnx_int4`.
    """
    import torch

    versions = require_runtimes(formats)
    model = sub.dit.eval()
    written = []
    for fmt in formats:
        details: dict[str, Any] = {}

        def fill(tmp: Path, fmt: Format = fmt, details: dict[str, Any] = details) -> None:
            details.update(_export_one(fmt, model, tmp, batch=batch, palettize_bits=palettize_bits))
            details.update(format=fmt, runtime=RUNTIMES[fmt].label, package=RUNTIMES[fmt].module,
                           package_version=versions[fmt], torch=torch.__version__, config=sub.cfg.to_dict(),
                           config_id=sub.cfg.id, experiment=sub.space.name, batch=batch,
                           files={name: tree_bytes(tmp / name) for name in details["artefacts"]})
            (tmp / "artefact.json").write_text(json.dumps(details, indent=2) + "\n")
            from hwnas.compress.deploy_notes import measure_notes

            (tmp / "MEASURE.md").write_text(measure_notes(fmt, sub=sub, details=details))

        folder = atomic_directory(Path(out) / fmt, fill)
        written.append(Artefact(fmt, folder, dict(details["files"]), details))
    return written


def load_runner(fmt: Format, path: str | Path, *, threads: int = 1) -> Runner:
    """A callable that runs the artefact at `path` on this host's CPU with `threads` threads.
    Raises ValueError for a format that cannot run here (Core ML needs macOS or iOS)."""
    if fmt == "onnx":
        import onnxruntime as ort

        from hwnas.model import INPUT_NAMES

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(inputs: Sequence[torch.Tensor]) -> np.ndarray:
            return session.run(None, {k: v.numpy() for k, v in zip(INPUT_NAMES, inputs)})[0]

        return run
    if fmt == "executorch":
        from hwnas.compress.deploy_executorch import load_executorch

        return load_executorch(path, threads=threads)
    raise ValueError(f"{RUNTIMES[fmt].label} artefacts cannot run on this host ({fmt}); time them on the device")


def tree_bytes(path: Path) -> int:
    """Size on disk of a file, or of all files under a folder (an `.mlpackage`), in bytes."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _export_one(fmt: Format, model: StaticDiT, folder: Path, *, batch: int,
                palettize_bits: int | None) -> dict[str, Any]:
    """Write one format's files into `folder`; returns its details (with `artefacts`, the names
    written, and `inputs`/`outputs`)."""
    if fmt == "coreml":
        from hwnas.compress.deploy_coreml import export_coreml

        return export_coreml(model, folder, batch=batch, palettize_bits=palettize_bits)
    if fmt == "executorch":
        from hwnas.compress.deploy_executorch import export_executorch

        return export_executorch(model, folder, batch=batch)
    import numpy as np
    import torch

    from hwnas.model import example_inputs, export_onnx, run_onnx

    path = export_onnx(model, folder / RUNTIMES["onnx"].file, batch=batch)
    inputs = example_inputs(model.space, batch=batch)
    with torch.no_grad():
        expected = model(*inputs).numpy()
    details: dict[str, Any] = {"artefacts": [path.name], "inputs": io_spec(inputs), "precision": "fp32", "opset": 17,
                               "outputs": [{"name": "v", "shape": list(expected.shape), "dtype": "float32"}],
                               "parity_max_abs": float(np.abs(run_onnx(path, inputs, threads=1) - expected).max())}
    if palettize_bits in (4, 8):
        details["palettized"] = _palettized_onnx(model, folder, bits=palettize_bits, batch=batch)
        details["artefacts"].append(details["palettized"]["file"])
    elif palettize_bits is not None:
        details["palettized_skipped"] = f"ONNX palettes are 4 or 8 bits, not {palettize_bits}"
    return details


def _palettized_onnx(model: StaticDiT, folder: Path, *, bits: int, batch: int) -> dict[str, Any]:
    """`model-w{bits}.onnx`: every weight layer k-means palettized per tensor (codes and fp16
    palettes in the file, decoded by onnxruntime at session start), the rest fp16, as Core ML's
    palettization stores it; parity against the PyTorch model with the same dequantized weights."""
    from hwnas.compress.onnx_int4 import check_parity, export_int4_onnx
    from hwnas.compress.quant import dequantized_copy, quantize_model
    from hwnas.compress.settings import QuantSpec

    q = quantize_model(model, QuantSpec("kmeans", bits, None, side_bits=16))  # type: ignore[arg-type]  # bits: 4 or 8
    path = folder / f"model-w{bits}.onnx"
    export_int4_onnx(model, q, path, batch=batch)
    parity = check_parity(path, dequantized_copy(model, q), batch=batch)
    return {"file": path.name, "nbits": bits, "mode": "kmeans", "granularity": "per_tensor",
            "precision": "fp32", "decoded": "at session start (onnxruntime constant folding): runs as fp32",
            **{k: v for k, v in q.summary().items() if k in ("avg_bits", "compression_vs_fp16", "layers")},
            "parity_max_abs_vs_dequantized": parity["max_abs_diff"]}


def io_spec(inputs: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """`[{"name", "shape", "dtype"}]` of the graph inputs `(x, t, text, text_mask)`."""
    from hwnas.model import INPUT_NAMES

    return [{"name": n, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for n, v in zip(INPUT_NAMES, inputs)]
