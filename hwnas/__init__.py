"""hwnas: hardware-aware NAS and benchmarking for efficient text-to-image diffusion transformers.

Pipeline stages, one subpackage each (imports point from earlier to later stages):
`space` (sub-DiT configs, pure) -> `cost` (params/FLOPs/bytes, pure) -> `model` (elastic DiT)
-> `data` -> `train` -> `metrics` -> `latency` -> `search` -> `compress` -> `report`; `cli` is a
thin layer over them. `io` (atomic file writes, SHA-256) and `paths` (the checkout's shipped files)
serve every stage.
"""

__version__ = "0.1.0"
