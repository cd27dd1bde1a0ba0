"""Stage ``report``: the run directory (links to every artifact, predictions, routing table) and ``metrics.json``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from kexpert.models import routing_stats
from kexpert.models.factory import BaseModelSpec
from kexpert.pipeline.stages.results import Evaluation, StageLog
from kexpert.tasks.task import Task
from kexpert.utils.io import read_jsonl, write_json, write_jsonl
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def link(target: Path, link_path: Path) -> None:
    """Symlink ``link_path`` -> ``target`` (a ``.path`` text pointer where the file system has no symlinks)."""
    link_path.parent.mkdir(parents=True, exist_ok=True)
    if link_path.is_symlink() or link_path.exists():
        link_path.unlink()
    try:
        os.symlink(target, link_path)
    except OSError:
        link_path.with_suffix(".path").write_text(str(target))


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Total parameters and the adapter's (LoRA, router and expert tensors)."""
    total = sum(p.numel() for p in model.parameters())
    adapter = sum(
        p.numel()
        for n, p in model.named_parameters()
        if "lora" in n.lower() or "router" in n.lower() or "expert" in n.lower()
    )
    return {"total": total, "adapter": adapter}


@dataclass(frozen=True)
class RoutingProbe:
    """What a routing report routes, so the trained and the untrained MoE see the same texts the same way.

    Holds no model: the trained model can be released between :func:`routing_report` and
    :func:`init_routing_report`.

    Attributes:
        title: The report's title.
        texts: Prompt + gold target of (up to 100) eval items.
        tokenizer: The models' tokenizer.
        expert_names: One name per expert, or ``None``.
        batch_size: Texts per forward.
        progress: Show a progress bar.
    """

    title: str
    texts: list[str]
    tokenizer: Any
    expert_names: list[str] | None
    batch_size: int
    progress: bool

    def collect(self, model: Any) -> routing_stats.RoutingStats:
        """Route the texts through ``model`` and count the routings per layer and expert."""
        return routing_stats.collect_routing_stats(
            model,
            self.tokenizer,
            self.texts,
            expert_names=self.expert_names,
            batch_size=self.batch_size,
            progress=self.progress,
        )


def routing_report(
    task: Task,
    evaluated: Task,
    eval_cfg: DictConfig,
    spec: BaseModelSpec,
    model: Any,
    tokenizer: Any,
    expert_names: list[str] | None,
    out_dir: Path,
) -> tuple[dict[str, Any], RoutingProbe, routing_stats.RoutingStats]:
    """Fraction of tokens routed to each expert per layer over (up to 100) eval items (the paper's Fig. 7).

    Returns:
        ``(report, probe, stats)``: the written files (``routing/``) by kind, the probe and the trained model's
        statistics, for :func:`init_routing_report` (which the caller runs after releasing ``model``).
    """
    examples = evaluated.eval_examples(limit=min(eval_cfg.limit or 100, 100), seed=eval_cfg.seed)
    texts = routing_stats.eval_texts(task, examples, spec.prompt_format, tokenizer)
    probe = RoutingProbe(
        f"{task.name} routing", texts, tokenizer, expert_names, int(eval_cfg.batch_size), bool(eval_cfg.progress)
    )
    stats = probe.collect(model)
    paths = routing_stats.write_routing_report(stats, out_dir / "routing", title=probe.title)
    return {k: str(v) for k, v in paths.items()}, probe, stats


def init_routing_report(
    probe: RoutingProbe, stats: routing_stats.RoutingStats, untrained: Callable[[], Any], out_dir: Path
) -> dict[str, Any]:
    """Route the probe's texts through the MoE as training started it and compare with the trained routing.

    ``untrained`` (e.g. ``MoEMethod.load_untrained``) builds a second model: call this after the trained one is
    released. :func:`~kexpert.models.routing_stats.routing_agreement` of the two tables is returned under
    ``init_agreement`` and written to ``routing/routing_init.json``: r near 1 means the routing is still the init's.

    Args:
        probe: The texts of the trained model's report.
        stats: The trained model's routing statistics.
        untrained: Returns ``(model, tokenizer)`` of the MoE at initialisation.
        out_dir: The run directory.
    """
    built = untrained()
    init = probe.collect(built[0])
    del built
    agreement = routing_stats.routing_agreement(stats, init)
    path = out_dir / "routing" / "routing_init.json"
    write_json(path, {"agreement": agreement, "untrained": {"layers": init.layers, "fractions": init.fractions}})
    return {"init_agreement": agreement, "init_json": str(path)}


def publish_run_dir(out_dir: Path, stages: StageLog, evaluation: Evaluation | None) -> None:
    """Link every artifact the run used into ``out_dir/artifacts`` and copy the predictions beside metrics.json."""
    for name, art in stages.artifacts.items():
        link(art.path, out_dir / "artifacts" / name)
    if evaluation is not None:
        write_jsonl(out_dir / "predictions.jsonl", read_jsonl(evaluation.artifact.path / "predictions.jsonl"))


def stage_cache_summary(stages: StageLog) -> dict[str, Any]:
    """For ``metrics.json``: every stage's key, whether it was reused, its build time and path."""
    return {
        n: {"key": a.key, "reused": a.reused, "built_wall_s": a.wall_s, "path": str(a.path)}
        for n, a in stages.artifacts.items()
    }


def log_metrics(loggers: list, metrics: dict[str, Any]) -> None:
    """Send the run's scores, stage times and identity to every Lightning logger (a failing logger only warns)."""
    flat = {}
    for k, v in (metrics.get("eval") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[f"test/{metrics['task']}_{k}"] = v
    for k, v in (metrics.get("stage_wall_s") or {}).items():
        flat[f"time/{k}_s"] = v
    agreement = (metrics.get("routing") or {}).get("init_agreement") or {}
    for k in ("r", "mad", "top2", "per_layer_r_mean"):
        if agreement.get(k) is not None:
            flat[f"routing/init_{k}"] = agreement[k]
    for lg in loggers:
        try:
            lg.log_metrics(flat)
            lg.log_hyperparams(
                {k: metrics[k] for k in ("method", "task", "k_shot", "data_seed", "seed") if k in metrics}
            )
            if hasattr(lg, "experiment") and type(lg).__name__ == "WandbLogger":
                import wandb  # optional: only with logger=wandb

                lg.experiment.summary.update({"score": metrics.get("score"), "experts": metrics.get("experts")})
                png = (metrics.get("routing") or {}).get("png")
                if png and Path(png).exists():
                    lg.experiment.log({"routing/heatmap": wandb.Image(png)})
        except Exception as e:  # a logger must never lose a finished run
            log.warning("logger %s failed: %s", type(lg).__name__, e)


def summary_line(task: str, label: str, oracle: bool, evaluation: Evaluation, out_dir: Path) -> str:
    """``arc_e ROCKET: acc = 55.3% (95% CI ..., n=150) -> <run dir>``."""
    ev = evaluation.metrics
    key = ev["primary_metric"]
    lo, hi = ev[f"{key}_ci95"]
    tag = " [ORACLE]" if oracle else ""
    return (
        f"{task} {label}{tag}: {key} = {100 * evaluation.score:.1f}% "
        f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}, n={ev['n']}) -> {out_dir}"
    )
