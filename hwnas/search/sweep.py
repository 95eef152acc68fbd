"""A budget sweep: `hwnas search --budget 1.2s,1.8s,2.4s`, one search per budget sharing quality evaluations.

Quality is what a search pays for, and it does not depend on the budget. So the sweep loads the
supernet once and shares one quality cache (by `SubnetConfig.id`) across its budgets, and runs them
from the loosest to the tightest: a multi-objective search under the loosest budget already
explores the front below it. Each tighter budget's study starts from the sub-DiTs evaluated so
far that fit it (enqueued first, answered from the cache: no evaluation), then asks
`refine_trials` new trials around its own budget. By default the tighter budgets share a quarter
of `--trials` between them (`REFINE_SHARE`), so a sweep asks at most 1.25x the trials of one
search (`benchmarks/budget_sweep.py` measures evaluations and fronts against standalone searches).

Layout: `<reports>/<device>-<b1>-<b2>-...-<date>/` holds `sweep.json` (the quality evaluations per
budget and in total), `compare.html` and `compare.csv` (the fronts overlaid), and one ordinary run
directory per budget (`1.2s/`, ...). Each member's identity includes every budget of the sweep, so a
standalone search is never resumed as a sweep member nor the other way round; rerunning the sweep
command resumes it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from hwnas.io import atomic_write_json
from hwnas.paths import display_path
from hwnas.search.budget import format_ms, parse_budget_ms
from hwnas.search.study import SearchSettings

SWEEP_FILE = "sweep.json"


def parse_budgets_ms(text: str) -> tuple[float, ...]:
    """Budgets in milliseconds from `1.8s` or a comma-separated list `1.2s,1.8s,2.4s`, in increasing order.

    Raises ValueError naming the malformed element (its position and text), or a repeated budget.
    """
    parts = str(text).split(",")
    if len(parts) == 1:
        return (parse_budget_ms(text),)
    out: dict[float, str] = {}
    for i, part in enumerate(parts, start=1):
        if not part.strip():
            raise ValueError(f"budget list {text!r}: element {i} is empty")
        try:
            ms = parse_budget_ms(part)
        except ValueError as exc:
            raise ValueError(f"budget list {text!r}: element {i} {part.strip()!r}: {exc}") from None
        if ms in out:
            raise ValueError(f"budget list {text!r}: element {i} {part.strip()!r} repeats {out[ms]!r}")
        out[ms] = part.strip()
    return tuple(sorted(out))


REFINE_SHARE = 0.25
"""The tighter budgets' new trials together, as a share of `--trials` (the loosest budget's)."""


def default_refine_trials(n_trials: int, n_budgets: int) -> int:
    """New trials per budget after the loosest: together `REFINE_SHARE` of `n_trials` (at least 1 each)."""
    return max(1, int(n_trials * REFINE_SHARE) // (n_budgets - 1))


@dataclass(frozen=True)
class SweepMember:
    """One budget of a sweep, as it stands after the sweep ran."""

    budget_ms: float
    run_dir: Path
    carried_trials: int
    """Trials enqueued from the looser budgets' evaluations (answered from the shared cache)."""
    trials: int
    quality_evaluations: int
    """Sub-DiTs whose quality this budget evaluated (not answered from the cache)."""
    quality_cache_hits: int
    best: dict[str, Any] | None
    state: str
    """done, timeout or interrupted."""

    def to_dict(self) -> dict[str, Any]:
        return {"budget_ms": self.budget_ms, "run_dir": display_path(self.run_dir),
                "carried_trials": self.carried_trials, "trials": self.trials,
                "quality_evaluations": self.quality_evaluations, "quality_cache_hits": self.quality_cache_hits,
                "state": self.state, "best": self.best}


@dataclass(frozen=True)
class SweepResult:
    sweep_dir: Path
    budgets_ms: tuple[float, ...]
    members: tuple[SweepMember, ...]
    """In the order they ran: loosest budget first."""
    n_trials: int
    refine_trials: int
    notes: tuple[str, ...] = ()
    compare_html: Path | None = None
    timed_out: bool = False

    @property
    def quality_evaluations(self) -> int:
        """Quality evaluations of the whole sweep (each sub-DiT evaluated once, whichever budget asked)."""
        return sum(m.quality_evaluations for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        return {"sweep_dir": display_path(self.sweep_dir), "budgets_ms": list(self.budgets_ms),
                "n_trials": self.n_trials, "refine_trials": self.refine_trials,
                "quality_evaluations": {"per_budget": {format_ms(m.budget_ms): m.quality_evaluations
                                                       for m in self.members},
                                        "total": self.quality_evaluations},
                "members": [m.to_dict() for m in self.members],
                "compare_html": display_path(self.compare_html) if self.compare_html else None,
                "timed_out": self.timed_out, "notes": list(self.notes)}


def member_settings(settings: SearchSettings, budgets_ms: Sequence[float], *,
                    refine_trials: int) -> list[SearchSettings]:
    """The searches of a sweep, loosest budget first: the first asks `settings.n_trials` trials, the
    others `refine_trials` new ones beyond those they carry over."""
    order = sorted(budgets_ms, reverse=True)
    return [replace(settings, budget_ms=b, sweep_budgets_ms=tuple(sorted(budgets_ms)),
                    n_trials=settings.n_trials if i == 0 else refine_trials) for i, b in enumerate(order)]


def carried_configs(previous: Sequence[Path], *, budget_ms: float) -> list[Any]:
    """Sub-DiTs the looser budgets evaluated (their `trials.csv`) that fit `budget_ms`, distinct, their
    Pareto picks first, then by quality. Fit: feasible there (the same bounds) and a latency bound
    (`latency_ms_hi`, the same confidence and table) within `budget_ms`."""
    from hwnas.search.results import pareto_frame
    from hwnas.space import SubnetConfig

    frames = [pd.read_csv(d / "trials.csv") for d in previous if (d / "trials.csv").is_file()]
    if not frames:
        return []
    trials = pd.concat(frames, ignore_index=True)
    ok = trials[trials["feasible"] & trials["quality_evaluated"] & (trials["latency_ms_hi"] <= budget_ms)]
    ok = ok.drop_duplicates("config_id")
    front = pareto_frame(ok.assign(trial=range(len(ok))))
    rest = ok[~ok["config_id"].isin(front["config_id"])].sort_values(["quality", "config_id"])
    return [SubnetConfig.from_json(j) for j in [*front["config_json"], *rest["config_json"]]]


def sweep_identity(member_identity: dict[str, Any]) -> dict[str, Any]:
    """A sweep's identity: a member's without its budget (the sweep's budgets are in it), rehashed."""
    ident = {k: v for k, v in member_identity.items() if k not in ("budget_ms", "identity_hash")}
    ident["identity_hash"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return ident


def _stored_sweep(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def resolve_sweep_dir(settings: SearchSettings, identity: dict[str, Any], *, reports_dir: Path, out: Path | None,
                      force: bool = False, today: _dt.date | None = None) -> tuple[Path, str]:
    """(sweep directory, a one-line note or ""): `out`, or the sweep under `reports_dir` of the same
    identity (resume), or a fresh `<device>-<b1>-<b2>-...-<today>[-k]`.

    Raises RunConflictError where `out` holds another sweep or a single search, unless `force` (which
    removes that sweep's files).
    """
    from hwnas.search.run import RunConflictError, identity_diff

    key = identity["identity_hash"]
    if out is not None:
        old = _stored_sweep(out)
        if old is None and not (out / "settings.json").exists():
            return out, ""
        if old is not None and old.get("identity", {}).get("identity_hash") == key:
            return out, f"resuming {display_path(out)}"
        what = (f"another sweep ({identity_diff(old.get('identity', {}), identity)})" if old is not None
                else "a single search")
        if not force:
            raise RunConflictError(f"{display_path(out)} holds {what}; choose another --out, or add --force to "
                                   f"replace it")
        _clear_sweep(out)
        return out, f"replaced {what} in {display_path(out)}"
    for path in sorted(reports_dir.glob(f"*/{SWEEP_FILE}")) if reports_dir.is_dir() else []:
        old = _stored_sweep(path.parent) or {}
        if old.get("identity", {}).get("identity_hash") == key:
            return path.parent, f"resuming {display_path(path.parent)}"
    budgets = "-".join(format_ms(b) for b in settings.sweep_budgets_ms)
    stem = f"{settings.device}-{budgets}-{(today or _dt.date.today()).isoformat()}"
    for k in range(1, 1000):
        cand = reports_dir / (stem if k == 1 else f"{stem}-{k}")
        if not cand.exists():
            return cand, ""
    raise ValueError(f"too many sweeps named {stem} in {display_path(reports_dir)}")


def _clear_sweep(path: Path) -> None:
    from hwnas.search.run import _clear_run

    _clear_run(path)
    for name in (SWEEP_FILE, "compare.html", "compare.csv", "compare.png"):
        (path / name).unlink(missing_ok=True)
    for member in path.iterdir():
        if member.is_dir() and (member / "settings.json").is_file():
            shutil.rmtree(member)


def _member(budget_ms: float, run_dir: Path, result: dict[str, Any] | None, state: str) -> SweepMember:
    cost = result["cost"] if result else (json.loads((run_dir / "search_cost.json").read_text())
                                          if (run_dir / "search_cost.json").is_file() else {})
    settings = result["settings"] if result else {}
    return SweepMember(budget_ms=budget_ms, run_dir=run_dir, carried_trials=int(settings.get("carried_trials", 0)),
                       trials=int(cost.get("trials", 0)), quality_evaluations=int(cost.get("quality_evaluations", 0)),
                       quality_cache_hits=int(cost.get("quality_cache_hits", 0)),
                       best=result["best"] if result else None, state=state)


def run_sweep(settings: SearchSettings, budgets_ms: Sequence[float], *, refine_trials: int | None = None,
              reports_dir: str | Path = "reports", out: str | Path | None = None, console: Any = None,
              report: bool = True, force: bool = False, today: _dt.date | None = None) -> SweepResult:
    """Run (or resume) a budget sweep: every budget checked first, then one search per budget, loosest
    first, with one supernet and one quality cache; write `sweep.json` and the comparison page.

    `settings.budget_ms` is ignored (the budgets are `budgets_ms`, at least two); `settings.n_trials`
    is the loosest budget's trials; `refine_trials` (default `default_refine_trials`) each other's new
    ones. `settings.timeout_s` bounds the whole sweep. Raises what `run_search` raises;
    SearchInterrupted (Ctrl-C) names the sweep directory, after writing `sweep.json`.
    """
    from hwnas.search.run import SearchInterrupted, _load_quality, prepare, run_identity, run_search

    budgets = tuple(sorted(set(float(b) for b in budgets_ms)))
    if len(budgets) < 2:
        raise ValueError(f"a sweep needs at least two distinct budgets, got {[format_ms(b) for b in budgets]}")
    if settings.study is not None:
        raise ValueError(f"a sweep names one study per budget itself; drop --study {settings.study!r}")
    refine = refine_trials if refine_trials is not None else default_refine_trials(settings.n_trials, len(budgets))
    if refine < 1:
        raise ValueError(f"refine_trials must be >= 1, got {refine}")
    members = member_settings(settings, budgets, refine_trials=refine)
    contexts = [prepare(m) for m in members]  # every budget feasible before anything is loaded
    identity = sweep_identity(run_identity(contexts[0]))
    sweep_dir, note = resolve_sweep_dir(contexts[0].settings, identity, reports_dir=Path(reports_dir),
                                        out=Path(out) if out else None, force=force, today=today)
    notes = [note] if note else []
    if note and console is not None:
        console.print(note)
    s0 = contexts[0].settings
    quality = _load_quality(s0, contexts[0].space)  # one supernet, one cache for every budget
    sweep_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done: list[SweepMember] = []
    timed_out = False

    def write(compare_html: Path | None = None) -> SweepResult:
        result = SweepResult(sweep_dir=sweep_dir, budgets_ms=budgets, members=tuple(done), n_trials=settings.n_trials,
                             refine_trials=refine, notes=tuple(notes), compare_html=compare_html, timed_out=timed_out)
        atomic_write_json(sweep_dir / SWEEP_FILE, {**result.to_dict(), "identity": identity})
        return result

    for member in members:
        run_dir = sweep_dir / format_ms(member.budget_ms)
        carry = carried_configs([m.run_dir for m in done], budget_ms=member.budget_ms) if done else []
        if settings.timeout_s is not None:
            left = settings.timeout_s - (time.perf_counter() - start)
            if left <= 0:
                timed_out = True
                break
            member = replace(member, timeout_s=left)
        try:
            result = run_search(member, out=run_dir, console=console, report=report, shared_quality=quality,
                                carry=carry)
        except SearchInterrupted as exc:
            done.append(_member(member.budget_ms, run_dir, None, "interrupted"))
            write()
            raise SearchInterrupted(sweep_dir, done=exc.done, n_trials=exc.n_trials) from None
        state = "timeout" if result["timed_out"] else "done"
        done.append(_member(member.budget_ms, run_dir, result, state))
        if result["timed_out"]:
            timed_out = True
            break
    compare_html = None
    if report and not timed_out:
        from hwnas.report.compare import build_comparison

        compare_html, _ = build_comparison([m.run_dir for m in sorted(done, key=lambda m: m.budget_ms)],
                                           out=sweep_dir / "compare.html")
    return write(compare_html)
