"""ONNX export of a static sub-DiT and an onnxruntime (CPU) runner.

The graph has four inputs, `x (B, C, H, W)` float32, `t (B,)` float32, `text (B, L, Ct)` float32
and `text_mask (B, L)` bool, and one output `v (B, C, H, W)`; all shapes are fixed at export
(`batch`, the space's resolution and `text_len`). Both PyTorch exporters produce a graph that
matches torch to ~1e-6 here (torch 2.13, onnxruntime 1.32). The TorchScript one (`dynamo=False`,
the default) is faster: a 26-block, 256-token sub-DiT took ~17 s against ~45 s for `torch.export`
(`dynamo=True`) on 2 busy CPU cores. `dynamo=True` needs opset >= 18.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas.io import atomic_write
from hwnas.model.static import StaticDiT
from hwnas.space import SearchSpace

INPUT_NAMES: tuple[str, ...] = ("x", "t", "text", "text_mask")
OUTPUT_NAME = "v"


class VelocityOnly(nn.Module):
    """Positional-only forward returning the velocity (what every exporter traces: ONNX, Core ML,
    ExecuTorch)."""

    def __init__(self, model: StaticDiT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, text, text_mask)


def example_inputs(space: SearchSpace, *, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random `(x, t, text, text_mask)` of the shapes a sub-DiT of `space` takes (first text token
    always valid)."""
    gen = torch.Generator().manual_seed(seed)
    side = space.latent_size
    x = torch.randn(batch, space.latent_channels, side, side, generator=gen)
    t = torch.rand(batch, generator=gen)
    text = torch.randn(batch, space.text_len, space.text_dim, generator=gen)
    mask = torch.rand(batch, space.text_len, generator=gen) < 0.7
    mask[:, 0] = True
    return x, t, text, mask


def export_onnx(
    model: StaticDiT,
    path: str | Path,
    *,
    batch: int = 1,
    opset: int | None = None,
    dynamo: bool = False,
) -> Path:
    """Write `model` (in eval mode, fp32, on CPU) as an ONNX file at `path`; returns the path.

    `opset` defaults to 17 for the TorchScript exporter and 18 for `dynamo=True` (its minimum).
    """
    was_training = model.training
    wrapper = VelocityOnly(model.eval())
    args = example_inputs(model.space, batch=batch)
    dynamo_only: dict[str, Any] = {"external_data": False} if dynamo else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer/deprecation chatter about constant index tensors
            return atomic_write(path, lambda tmp: torch.onnx.export(
                wrapper, args, str(tmp), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                opset_version=opset or (18 if dynamo else 17), dynamo=dynamo,
                **dynamo_only,
            ))
    finally:
        model.train(was_training)


def run_onnx(
    path: str | Path,
    inputs: Mapping[str, np.ndarray | torch.Tensor] | Sequence[np.ndarray | torch.Tensor],
    *,
    threads: int = 0,
) -> np.ndarray:
    """Run an exported sub-DiT with onnxruntime's CPU provider; returns `v (B, C, H, W)`.

    `inputs` are named by `INPUT_NAMES` or given in that order; tensors are converted to numpy.
    `threads` = 0 lets onnxruntime choose its intra-op thread count.
    """
    import onnxruntime as ort

    if not isinstance(inputs, Mapping):
        if len(inputs) != len(INPUT_NAMES):
            raise ValueError(f"expected {len(INPUT_NAMES)} inputs {INPUT_NAMES}, got {len(inputs)}")
        inputs = dict(zip(INPUT_NAMES, inputs))
    feed = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in inputs.items()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    if names != set(feed):
        raise ValueError(f"{path} takes inputs {sorted(names)}, got {sorted(feed)}")
    return session.run([OUTPUT_NAME], feed)[0]
