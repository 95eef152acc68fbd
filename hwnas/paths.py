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


def display_path(path: str | Path) -> str:
    """`path` as written into files and messages: relative to the hwnas checkout when inside it (shipped
    reports carry no absolute paths of the machine that made them), else as given."""
    given = Path(path)
    try:
        return str(given.resolve().relative_to(REPO_ROOT))
    except (ValueError, OSError):
        return str(given)


def redact_url(url: str) -> str:
    """A storage URL with its password replaced by `***` (`postgresql://user:***@host/db`); an SQLite
    URL names its file the way `display_path` does. Anything unparsable is returned without its
    `user:password@` part."""
    if url.startswith("sqlite:///"):
        return "sqlite:///" + display_path(url.removeprefix("sqlite:///"))
    return redact_passwords(url)


def redact_passwords(text: str) -> str:
    """`text` with the password of every `scheme://user:password@` in it replaced by `***`."""
    import re

    return re.sub(r"(?<=://)([^/@:\s]*):[^/\s]*@", r"\1:***@", text)
