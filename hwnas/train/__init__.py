"""Flow-matching training of the elastic supernet, checkpoints and sampling.

Public: `train`, `TrainConfig`, `load_train_config`, `Supernet`, `build_supernet`,
`load_supernet`, `generate`, `save_grid`, and the flow helpers in `hwnas.train.flow`.
"""

from hwnas.train.config import TrainConfig, load_train_config
from hwnas.train.loop import train
from hwnas.train.sample import generate, save_grid
from hwnas.train.supernet import DEFAULT_CHECKPOINT, Supernet, build_supernet, load_supernet

__all__ = [
    "DEFAULT_CHECKPOINT", "Supernet", "TrainConfig", "build_supernet", "generate", "load_supernet",
    "load_train_config", "save_grid", "train",
]
