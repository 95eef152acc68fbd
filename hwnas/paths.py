"""Where hwnas's shipped files live: the checkout that holds the package (editable install)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(path: str | Path) -> Path:
    """`path` as given if it exists (or is absolute), else relative to the hwnas checkout, so the
    shipped experiments, profiles and tables are found from any working directory."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    shipped = REPO_ROOT / given
    return shipped if shipped.exists() else given
