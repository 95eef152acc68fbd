"""`MEASURE.md` of an exported artefact: how to time it on a phone, and the row of the CSV that
`hwnas lut calibrate --measurements` reads (columns config, ms, per, steps, precision, runtime,
note; `hwnas.latency.calibrate`)."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from hwnas.compress.deploy import RUNTIMES, Format
from hwnas.space import NAMED_CONFIGS, resolve_config

if TYPE_CHECKING:
    from hwnas.compress.extract import SubDiT

_RECIPES: dict[Format, str] = {
    "coreml": """\
On a Mac with Xcode 15 or later and the iPhone connected:

1. Open `{file}` in Xcode (double-click), select the **Performance** tab, press **+**, choose the
   device and compute units **All** (CPU, GPU and Neural Engine), and run the report.
2. Read **Prediction** (median, ms) and the per-op compute-unit split: ops that fall back from the
   Neural Engine to the CPU are listed there.
3. Repeat for `{palettized}` (4-bit palettized weights) if it is present.

Without Xcode's report, compile once (`xcrun coremlc compile {file} out/`) and time
`MLModel.prediction(from:)` in an app: discard the first 5 calls, take the median of 50.
Core ML cannot run on Linux, so nothing here was executed; `artefact.json` lists the spec and the
MIL ops instead. `text_mask` is a float32 input (1.0 = valid token, 0.0 = padding).""",
    "executorch": """\
Cross-compile `executor_runner` with XNNPACK for the phone (ExecuTorch {version}, the same release
that wrote `{file}`):

```bash
cmake -DCMAKE_TOOLCHAIN_FILE=$ANDROID_NDK/build/cmake/android.toolchain.cmake -DANDROID_ABI=arm64-v8a \\
      -DCMAKE_BUILD_TYPE=Release -DEXECUTORCH_BUILD_XNNPACK=ON -DEXECUTORCH_BUILD_EXTENSION_MODULE=ON \\
      -DEXECUTORCH_BUILD_EXTENSION_DATA_LOADER=ON -DEXECUTORCH_BUILD_EXTENSION_TENSOR=ON -B cmake-android .
cmake --build cmake-android -j --target executor_runner
adb push cmake-android/executor_runner {file} /data/local/tmp/
adb shell "cd /data/local/tmp && ./executor_runner --model_path {file} --num_executions 50 --cpu_threads 1"
```

The runner logs the total time of the executions: divide by their number (run it twice and keep
the second: the first pays for page faults). With `--cpu_threads 4` the big cores are used; write
the thread count in the note. The ExecuTorch Android benchmark app (`extension/benchmark/android`
in the ExecuTorch repository) gives the same figure from an APK.""",
    "onnx": """\
Build or download `onnxruntime_perf_test` for Android arm64 (it ships with ONNX Runtime's
sources, `onnxruntime/test/perftest`), then:

```bash
adb push onnxruntime_perf_test {file} /data/local/tmp/
adb shell "cd /data/local/tmp && ./onnxruntime_perf_test -e cpu -x 1 -r 50 -I {file}"
```

`-I` generates the inputs (shapes are fixed in the graph), `-x 1` one intra-op thread; read
`Average inference time cost` (ms). Use `-e nnapi` or `-e qnn` for the phone's accelerators.
`{palettized}` (4-bit palettized weights, if present) is the smaller download: onnxruntime
decodes its palettes when the session starts, so it times as `{file}` does and needs no row. Its
weights are not `{file}`'s: score it before you ship it (`hwnas quantize --method kmeans`).""",
}


def measure_notes(fmt: Format, *, sub: SubDiT, details: dict[str, Any]) -> str:
    """The `MEASURE.md` text for one artefact folder (`details` as in its `artefact.json`)."""
    rt = RUNTIMES[fmt]
    palettized = details.get("palettized", {}).get("file", "")
    recipe = _RECIPES[fmt].format(file=rt.file, palettized=palettized or "a palettized copy",
                                  version=details.get("package_version", ""))
    rows = [_row(sub, details["precision"], rt.label, rt.file)]
    if palettized and fmt == "coreml":  # ONNX decodes its palettes at load: the same time as fp32
        rows.append(_row(sub, details["palettized"]["precision"], rt.label, palettized))
    shapes = ", ".join(f"`{d['name']}` {tuple(d['shape'])} {d['dtype']}" for d in details["inputs"])
    name = sub.space.name
    return f"""# Timing `{rt.file}` ({rt.label}) on a phone

Sub-DiT `{sub.cfg.id}` ({sub.cfg.describe()}) of the experiment `{name}`, batch {details['batch']}.
One call is one denoising step: inputs {shapes}; output `v` {tuple(details['outputs'][0]['shape'])}.
It has this experiment's resolution and widths, so its time calibrates this experiment's table only.

## Run it

{recipe}

## Record it

Append to your measurements CSV (header first if the file is new), replacing `<ms>` by the
median milliseconds of one call:

```
{_csv_lines(rows)}```

Then calibrate the device's table of this experiment (a first table comes from
`hwnas lut build --device DEVICE --experiment experiments/{name}.toml --estimate`; the experiment's
TOML is also stored in the sub-DiT's `model.json` as `experiment_toml`):

```bash
hwnas lut calibrate --device DEVICE --experiment experiments/{name}.toml --measurements myphone.csv
```

The precision must be one the device profile has (`hwnas devices`): fp32 for CPU runtimes
(e.g. `pixel8-cpu`), fp16 / w4a16 for the NPU profiles.
"""


def _row(sub: SubDiT, precision: str, runtime: str, file: str) -> dict[str, str]:
    note = f"{file}, hwnas export, batch 1; device, OS, compute units or threads: <fill in>"
    return {"config": config_name(sub), "ms": "<ms>", "per": "step", "steps": "", "precision": precision,
            "runtime": runtime, "note": note}


def config_name(sub: SubDiT) -> str:
    """The sub-DiT as the calibration CSV names it: a preset, `smallest` or `largest` where it is
    one of those, else its config JSON."""
    for name in NAMED_CONFIGS:
        try:
            if resolve_config(sub.space, name) == sub.cfg:
                return name
        except ValueError:  # a preset this space's widths cannot express
            continue
    return sub.cfg.to_json()


def _csv_lines(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
