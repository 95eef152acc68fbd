"""The validation flow-matching loss as a quality metric (lower is better).

It lives with training (`hwnas.train.validation`), which logs it during a run; this module is
where the metrics stage and the search import it from.
"""

from hwnas.train.validation import ValSet, make_val_set, val_loss

__all__ = ["ValSet", "make_val_set", "val_loss"]
