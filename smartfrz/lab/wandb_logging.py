"""Weights & Biases logging for SmartFRZ runs, built so that W&B can never stall or break training.

Runs are grouped by experiment (``group``) and tagged and configured by method, so comparing methods
is a few clicks in the UI, or one ``python -m smartfrz.lab.wandb_report``. Without credentials the run
is written offline (``wandb sync`` uploads it later); any W&B failure becomes one warning, after
which the logger does nothing.

    with WandbLogger(group="cifar10-resnet18", method="smartfrz", config=frz.config.to_dict()) as wb:
        res = fit(..., frz=frz, on_step=smartfrz_callback(frz, wb, every=50), on_eval=wb.log_row)
        wb.log_fit(res, frz)
"""
from __future__ import annotations

import functools
import io
import os
import warnings
from typing import Any, Callable, Iterable, Sequence

TIMELINE_COLUMNS = ("step", "epoch", "unit", "index", "event", "params_frozen", "flop_share", "p_freeze")
SPAN_COLUMNS = ("unit", "index", "frozen_from", "frozen_to", "steps_frozen", "flop_share", "params_frozen")
STEP_KEY = "global_step"  # x-axis of every chart: lets history be logged after the live rows
_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def logged_in() -> bool:
    """Whether W&B credentials exist (env key, identity token, settings file or netrc); no network."""
    if os.getenv("WANDB_API_KEY") or os.getenv("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        import wandb
        try:
            return bool(wandb.login(prompt=False, verify=False))
        except TypeError:  # wandb before login(prompt=...)
            return bool(wandb.api.api_key)
    except Exception:
        return False


def resolve_mode(mode: str | None = None) -> str:
    """``WANDB_MODE`` wins, then ``mode``; unset means online only when logged in, so it never prompts."""
    want = (os.getenv("WANDB_MODE") or mode or "").strip().lower()
    if want and want not in _MODES:
        warnings.warn(f"unknown W&B mode {want!r}; choosing online/offline from the credentials", stacklevel=3)
        want = ""
    want = _MODES.get(want)
    if want in ("offline", "disabled"):
        return want
    if logged_in():
        return "online"
    if want == "online":
        warnings.warn("W&B mode 'online' but no credentials: logging offline; `wandb login`, then `wandb sync`",
                      stacklevel=3)
    return "offline"


def frozen_spans(timeline: Iterable[dict], total_steps: int) -> list[dict]:
    """One row per stretch a unit stayed frozen, from the engine's freeze/unfreeze events."""
    open_: dict[int, dict] = {}
    spans = []
    for e in timeline:
        i = e["index"]
        if e["event"] == "freeze" and i not in open_:
            open_[i] = e
        elif e["event"] == "unfreeze" and i in open_:
            spans.append((open_.pop(i), e["step"]))
    spans += [(e, max(total_steps, e["step"])) for e in open_.values()]
    rows = [{"unit": e["unit"], "index": e["index"], "frozen_from": e["step"], "frozen_to": end,
             "steps_frozen": end - e["step"], "flop_share": e["flop_share"], "params_frozen": e["params_frozen"]}
            for e, end in spans]
    return sorted(rows, key=lambda r: (r["index"], r["frozen_from"]))


def frozen_stats(frz) -> dict[str, float]:
    """The engine's frozen state now: plain Python numbers, so reading them never syncs a device."""
    return {"smartfrz/frozen_units": frz.num_frozen, "smartfrz/frozen_param_fraction": frz.frozen_param_fraction,
            "smartfrz/frozen_flop_share": frz.frozen_flop_share, "smartfrz/epoch": frz.epoch}


def summarize(frz=None, result: Any = None, total_steps: int | None = None) -> dict[str, Any]:
    """Run summary for comparing methods: final metric, wall time, and the savings over the whole run.

    ``avg_frozen_flop_share`` is the time-averaged share of forward FLOPs in frozen units: the share of
    backward compute (about 2/3 of training compute) that freezing skipped.
    """
    out: dict[str, Any] = {}
    if result is not None:
        final = getattr(result, "final", None) or (result if isinstance(result, dict) else {})
        if "metric" in final:
            out["final/metric"] = final["metric"]
        if final.get("metric_name") in final:
            out[f"final/{final['metric_name']}"] = final[final["metric_name"]]
        for k in ("wall_s", "steps"):
            if getattr(result, k, None) is not None:
                out[k] = getattr(result, k)
    if frz is not None:
        total = total_steps or (out.get("steps") or frz.step_count)
        spans = frozen_spans(frz.timeline, total)
        n_params = max(1, frz.trainable_total)  # the weights that train, as params_frozen counts them
        avg = lambda key: sum(s[key] * s["steps_frozen"] for s in spans) / max(total, 1)
        out.update({"smartfrz/policy": frz.policy.name, "smartfrz/frozen_units": frz.num_frozen,
                    "smartfrz/frozen_param_fraction": frz.frozen_param_fraction,
                    "smartfrz/frozen_flop_share": frz.frozen_flop_share,
                    "smartfrz/avg_frozen_flop_share": avg("flop_share"),
                    "smartfrz/avg_frozen_param_fraction": avg("params_frozen") / n_params})
    return out


def timeline_figure(timeline: Sequence[dict], unit_names: Sequence[str], total_steps: int):
    """Units × steps chart: a bar per frozen stretch, first unit on top. A pyplot-free matplotlib Figure."""
    from matplotlib.figure import Figure

    spans = frozen_spans(timeline, total_steps)
    fig = Figure(figsize=(8, 1.2 + 0.28 * max(1, len(unit_names))), dpi=100)
    ax = fig.add_subplot()
    for s in spans:
        ax.broken_barh([(s["frozen_from"], s["steps_frozen"])], (s["index"] - 0.4, 0.8), color="#3b7dd8")
    ax.set_yticks(range(len(unit_names)), list(unit_names), fontsize=7)
    ax.set_ylim(len(unit_names) - 0.5, -0.5)
    ax.set_xlim(0, max(total_steps, 1))
    ax.set_xlabel("step")
    ax.set_title(f"frozen units over training ({sum(1 for s in spans if s['frozen_to'] >= total_steps)}"
                 f"/{len(unit_names)} frozen at the end)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _safe(method: Callable) -> Callable:
    """Turns any W&B error into one warning and makes the logger a no-op: logging must not end training."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.run is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any W&B failure, by design
            self._disable(f"{method.__name__} failed ({type(e).__name__}: {e})")
    return wrapper


class WandbLogger:
    """A W&B run for one training run; every method is a no-op once W&B is off or has failed."""

    def __init__(self, project: str = "smartfrz", group: str | None = None, name: str | None = None,
                 tags: Sequence[str] = (), config: dict | None = None, dir: str | os.PathLike | None = None,
                 mode: str | None = None, method: str | None = None, init_timeout: float = 30.0, **init_kwargs):
        self.run = None
        self._eval_steps: set[int] = set()
        self.mode = "disabled" if _rank() else resolve_mode(mode)  # under DDP only rank 0 logs
        if self.mode == "disabled":
            return
        config = dict(config or {})
        if method is not None:
            config.setdefault("method", method)
        tags = list(dict.fromkeys([*([method] if method else []), *tags]))
        try:
            import wandb
            settings = wandb.Settings(init_timeout=init_timeout, silent=True)
        except Exception as e:  # noqa: BLE001 - not installed, or too old for these settings
            warnings.warn(f"W&B logging is off: wandb unavailable ({type(e).__name__}: {e})", stacklevel=2)
            return
        if dir is not None:
            os.makedirs(dir, exist_ok=True)
        kw = {"project": project, "group": group, "name": name, "tags": tags, "config": config,
              "dir": None if dir is None else str(dir), "reinit": "create_new", "settings": settings, **init_kwargs}
        for mode in (self.mode, "offline") if self.mode == "online" else (self.mode,):
            try:
                self.run = wandb.init(mode=mode, **kw)
                self.mode = mode
                break
            except Exception as e:  # noqa: BLE001 - a network or setup failure must not stop training
                warnings.warn(f"W&B init ({mode}) failed ({type(e).__name__}: {e}); "
                              + ("trying offline" if mode == "online" else "W&B logging is off"), stacklevel=2)
        if self.run is not None:
            self._define_axes()

    @_safe
    def _define_axes(self) -> None:
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)

    @property
    def enabled(self) -> bool:
        return self.run is not None

    @property
    def dir(self) -> str | None:
        """The run's local files folder (tables and images land under ``media/``)."""
        return None if self.run is None else self.run.dir

    def _disable(self, why: str) -> None:
        warnings.warn(f"W&B logging is off from here: {why}", stacklevel=3)
        self.run = None

    # ------------------------------------------------------------------ logging
    @_safe
    def log_step(self, step: int, **metrics: Any) -> None:
        """Logs plain numbers at ``step`` (keys may contain '/' via ``**{...}``). Pass floats, not
        device tensors, or the log becomes a host sync."""
        self.run.log({STEP_KEY: int(step), **metrics})

    def log_row(self, row: dict) -> None:
        """One ``fit()`` history row: train rows as ``train/*``, eval rows as ``eval/*``; fits ``on_eval=``."""
        prefix = "eval/" if row.get("eval") else "train/"
        if row.get("eval"):
            self._eval_steps.add(row["step"])
        vals = {f"{prefix}{k}": v for k, v in row.items()
                if k not in ("step", "eval") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log_step(row["step"], **vals)

    def log_history(self, rows: Iterable[dict]) -> None:
        """A whole ``FitResult.history``, less eval rows already logged live through ``on_eval``."""
        for row in rows:
            if not (row.get("eval") and row["step"] in self._eval_steps):
                self.log_row(row)

    @_safe
    def log_freeze_events(self, timeline: Sequence[dict], key: str = "smartfrz/freeze_events") -> None:
        """The engine's timeline as a table: one row per freeze/unfreeze event."""
        import wandb
        rows = [[e.get(c) for c in TIMELINE_COLUMNS] for e in timeline]
        self.run.log({key: wandb.Table(columns=list(TIMELINE_COLUMNS), data=rows, allow_mixed_types=True)})

    @_safe
    def log_timeline_chart(self, timeline: Sequence[dict], unit_names: Sequence[str], total_steps: int,
                           key: str = "smartfrz/freeze_timeline") -> None:
        """Units × steps freeze chart as an image, plus its spans table (unit, frozen_from, frozen_to...)
        for a W&B custom chart (a Vega ``rect`` with x=frozen_from, x2=frozen_to, y=unit)."""
        import wandb
        spans = frozen_spans(timeline, total_steps)
        rows = [[s[c] for c in SPAN_COLUMNS] for s in spans]
        data = {f"{key}_spans": wandb.Table(columns=list(SPAN_COLUMNS), data=rows, allow_mixed_types=True)}
        try:
            from PIL import Image
            buf = io.BytesIO()
            timeline_figure(timeline, unit_names, total_steps).savefig(buf, format="png")
            buf.seek(0)
            data[key] = wandb.Image(Image.open(buf), caption="frozen units (bars) against training steps")
        except ImportError as e:  # the table alone still makes the chart in W&B
            warnings.warn(f"freeze timeline image skipped ({e}); the spans table is still logged", stacklevel=3)
        self.run.log({STEP_KEY: int(total_steps), **data})

    @_safe
    def log_summary(self, summary: dict) -> None:
        """Run-level numbers (final metric, savings) for the report's scatter plots and runs table."""
        self.run.summary.update(dict(summary))

    def log_fit(self, result: Any, frz=None, total_steps: int | None = None) -> None:
        """After ``fit()``: its history, the freeze events and timeline chart, and the run summary."""
        if not self.enabled:
            return
        self.log_history(result.history)
        if frz is not None:
            total = total_steps or result.steps or frz.step_count
            self.log_freeze_events(frz.timeline)
            self.log_timeline_chart(frz.timeline, [u.name for u in frz.units], total)
        self.log_summary(summarize(frz, result, total_steps))

    def finish(self, exit_code: int | None = None) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"W&B finish failed ({type(e).__name__}: {e})", stacklevel=2)

    def __enter__(self) -> "WandbLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)

    def __repr__(self) -> str:
        return f"WandbLogger(mode={self.mode!r}, run={None if self.run is None else self.run.id!r})"


def smartfrz_callback(frz, logger: WandbLogger, every: int = 50) -> Callable[[int], None]:
    """A ``fit(on_step=...)`` hook: logs the frozen fractions every ``every`` steps and at each change
    of the frozen prefix. It reads only host-side counters, so it adds no device sync."""
    if every < 1:
        raise ValueError(f"every must be a positive integer; got {every!r}")
    last = [-1]

    def on_step(step: int) -> None:
        if logger.enabled and (step % every == 0 or frz.num_frozen != last[0]):
            last[0] = frz.num_frozen
            logger.log_step(step, **frozen_stats(frz))
    return on_step
