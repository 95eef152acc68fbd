"""Third-party log lines hwnas silences in its own command line and benchmark scripts."""

from __future__ import annotations

import logging

_NATIVE_CHATTER = {
    "torchao": "Failed to load",  # its CUDA kernels, on a CPU-only machine
    "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao`",  # never loaded here
    "torch.utils._pytree": "is an Enum subclass",  # torchao registering its enums with torch.compile
    "coremltools": "Failed to load _ML",  # the Core ML runtime, which is macOS-only
}
"""Warnings, by logger and a piece of their text, that third-party imports print every time about
native code hwnas never calls: `executorch` pulls in torchao, which diffusers imports with the
autoencoder; coremltools looks for the Core ML runtime on Linux, where `hwnas export` only converts."""


class _DropChatter(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_native_chatter() -> None:
    """Drop `_NATIVE_CHATTER` (the command line and the benchmark scripts call it; a library user keeps
    every warning)."""
    for name, text in _NATIVE_CHATTER.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropChatter) for f in logger.filters):
            logger.addFilter(_DropChatter(text))
