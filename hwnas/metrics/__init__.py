"""Quality metrics. Compositional accuracy: GenEval-style analytic checking of shapes images
against their prompts (`check`, `score`)."""

from hwnas.metrics.compositional import CheckResult, CompositionalScore, DetectedObject, check, detect, score

__all__ = ["CheckResult", "CompositionalScore", "DetectedObject", "check", "detect", "score"]
