"""``python train.py``: the whole ROCKET pipeline for one task, with cached stages.

Stages, in order (``stages=`` runs a prefix or a subset):

* ``kshot``: draw the K-shot (``task``, ``k_shot``, ``data_seed``);
* ``experts``: K-shot expert selection (Algorithm 1; ``bank``, ``expert_selection``), when the method uses it;
* ``data``: Sim-Div data selection (Algorithm 2; ``pool``, ``encoder``, ``data_selection``), when it uses it;
* ``train``: build / fine-tune the method's model (``method``, ``moe``, ``optim``, ``trainer``, ``seed``);
* ``eval``: evaluate it on the task's eval split (``eval``);
* ``report``: ``metrics.json`` (per-stage wall time, trainable parameters), links to the artifacts used, routing
  statistics for MoE methods.

Every stage's artifact lives in ``${paths.cache_dir}/stages/<stage>/<hash of exactly its inputs>`` and is
published atomically (:mod:`kexpert.pipeline.cache`): a sweep over ``moe.top_k`` or ``seed`` reuses the
K-shot, the expert selection, the embeddings and the selected data.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kexpert.data.kshot import sample_kshot
from kexpert.data.records import Example, Instruction
from kexpert.eval.evaluator import evaluate
from kexpert.methods.base import Method, MethodContext
from kexpert.pipeline.cache import StageArtifact, StageCache
from kexpert.pipeline.validate import validate_config
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError, InvalidGridPoint
from kexpert.utils.instantiate import instantiate, to_container
from kexpert.utils.io import read_json, read_jsonl, sha1_of, write_json, write_jsonl
from kexpert.utils.loggers import build_loggers, close_loggers
from kexpert.utils.logging import get_logger
from kexpert.utils.provenance import provenance

log = get_logger(__name__)
STAGES = ("kshot", "experts", "data", "train", "eval", "report")
_VOLATILE = {
    "progress",
    "cache_dir",
    "out_dir",
    "save_dir",
    "default_root_dir",
    "enable_progress_bar",
    "log_every_n_steps",
    "enable_model_summary",
    "logger",
    "callbacks",
    # rows decoded together: each row's greedy tokens do not depend on its batch (tests/unit/test_generation.py)
    "generate_batch_size",
}


def _clean(obj: Any) -> Any:
    """Drop keys that do not change results (progress bars, where files go, decoding batch size) from a cache key."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _node(cfg: DictConfig, key: str) -> Any:
    return _clean(to_container(cfg.get(key))) if cfg.get(key) is not None else None


def resolve_stages(value: Any) -> list[str]:
    """``all`` / a stage name (runs the prefix up to it) / a list (exactly those, in pipeline order)."""
    if value in (None, "all"):
        return list(STAGES)
    if isinstance(value, str):
        if value not in STAGES:
            raise ConfigError(f"stages: unknown stage {value!r}; expected all, one of {', '.join(STAGES)} or a list")
        return list(STAGES[: STAGES.index(value) + 1])
    names = list(value)
    bad = [s for s in names if s not in STAGES]
    if bad:
        raise ConfigError(f"stages: unknown stage(s) {bad}; expected a subset of {list(STAGES)}")
    return [s for s in STAGES if s in names]


class Pipeline:
    """One run of ``train.py``: resolves, caches and links the stages of one config."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.cache = StageCache(cfg.paths.cache_dir, enabled=bool(cfg.get("use_cache", True)))
        self.out_dir = Path(cfg.paths.output_dir)
        self.task = instantiate(cfg.task, key="task")
        self.base_spec = instantiate(cfg.base_model, key="base_model")
        self.method: Method = instantiate(cfg.method, key="method")
        self.artifacts: dict[str, StageArtifact] = {}
        self._bank = None
        self._kshot: list[Example] | None = None

    # ------------------------------------------------------------- keys
    def _sub_cfg(self, out_dir: Path, **replace: Any) -> DictConfig:
        sub = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
        with open_dict(sub):
            sub.paths.output_dir = str(out_dir)
            sub.logger = None
            for k, v in replace.items():
                sub[k] = v
        return sub

    def _kshot_inputs(self) -> dict[str, Any]:
        return {"task": _node(self.cfg, "task"), "k_shot": int(self.cfg.k_shot), "data_seed": int(self.cfg.data_seed)}

    def _bank_identity(self) -> Any:
        bank = self.bank()
        return {"name": bank.name, "entries": sorted((e.name, e.sha256) for e in bank.entries)}

    # ------------------------------------------------------------ stages
    def bank(self):
        """The bank, validated against the base model (loaded once)."""
        if self._bank is None:
            if self.cfg.get("bank") is None:
                raise ConfigError("bank: this method needs a LoRA bank (choose one with bank=<name>, see conf/bank)")
            spec = instantiate(self.cfg.bank, key="bank")
            if self.cfg.get("build_bank_if_missing") and hasattr(spec, "missing") and spec.missing():
                log.info("bank %s: building the missing entries %s first", spec.name, spec.missing())
                tasks = {
                    n: instantiate(t, key=f"bank_tasks.{n}") for n, t in (self.cfg.get("bank_tasks") or {}).items()
                }
                sched = self.cfg.optim.get("scheduler")
                spec.build(
                    self.base_spec,
                    tasks,
                    instantiate(self.cfg.optim.optimizer, key="optim.optimizer"),
                    instantiate(sched, key="optim.scheduler") if sched else None,
                    self.cfg.trainer,
                )
            self._bank = spec.load(self.base_spec)
        return self._bank

    def kshot(self) -> list[Example]:
        """Stage ``kshot``."""
        if self._kshot is None:

            def build(d: Path) -> None:
                ex = sample_kshot(self.task.kshot_pool(), int(self.cfg.k_shot), int(self.cfg.data_seed))
                write_jsonl(d / "kshot.jsonl", [e.to_dict() for e in ex])
                write_jsonl(d / "kshot_sft.jsonl", [self.task.to_instruction(e).to_dict() for e in ex])
                write_json(d / "info.json", {"pool": self.task.kshot_pool_source, "ids": [e.id for e in ex]})

            art = self.cache.run("kshot", self._kshot_inputs(), build)
            self.artifacts["kshot"] = art
            self._kshot = [Example.from_dict(r) for r in read_jsonl(art.path / "kshot.jsonl")]
        return self._kshot

    def experts(self) -> tuple[list[str], dict[str, Any]]:
        """Stage ``experts``: the chosen group and the experts.json document."""
        from kexpert.pipeline import select_experts

        art = self.artifacts.get("experts")
        if art is None:
            inputs = {
                **self._kshot_inputs(),
                "base_model": self.base_spec.identity,
                "bank": self._bank_identity(),
                "expert_selection": _node(self.cfg, "expert_selection"),
            }
            art = self.cache.run("experts", inputs, lambda d: select_experts.run(self._sub_cfg(d)))
            self.artifacts["experts"] = art
        doc = read_json(art.path / "experts.json")
        return list(doc["chosen"]), doc

    def oracle(self) -> list[str]:
        """Stage ``oracle``: bank entries ordered by eval-split accuracy (Source Best first). ORACLE."""
        from kexpert.pipeline import select_experts

        sel = self.cfg.get("oracle_selection")
        if sel is None:
            raise ConfigError("oracle_selection: missing (train.yaml sets it from conf/expert_selection/oracle)")
        inputs = {
            "task": _node(self.cfg, "task"),
            "base_model": self.base_spec.identity,
            "bank": self._bank_identity(),
            "oracle_selection": _clean(to_container(sel)),
            "k_shot": int(self.cfg.k_shot),
            "data_seed": int(self.cfg.data_seed),
        }
        art = self.artifacts.get("oracle") or self.cache.run(
            "oracle", inputs, lambda d: select_experts.run(self._sub_cfg(d, expert_selection=to_container(sel)))
        )
        self.artifacts["oracle"] = art
        doc = read_json(art.path / "experts.json")
        ranks = {name: row.get("rank_sum", 0.0) for name, row in _rows_by_name(doc).items()}
        names = self.bank().names()
        return sorted(names, key=lambda n: (ranks.get(n, float("inf")), names.index(n)))

    def selected_data(self) -> list[Instruction]:
        """Stage ``data``: the selected open data D_A (without the K-shot)."""
        from kexpert.pipeline import select_data

        if str(self.cfg.data_selection.get("_target_", "")).endswith("NoDataSelection"):
            return []  # K-shot only
        inputs = {
            **self._kshot_inputs(),
            "pool": _node(self.cfg, "pool"),
            "encoder": _node(self.cfg, "encoder"),
            "data_selection": _node(self.cfg, "data_selection"),
            "embedding": _node(self.cfg, "embedding"),
            "decontamination": _node(self.cfg, "decontamination"),
            "index": _node(self.cfg, "index"),
        }
        art = self.artifacts.get("data") or self.cache.run("data", inputs, lambda d: select_data.run(self._sub_cfg(d)))
        self.artifacts["data"] = art
        rows = read_jsonl(art.path / "selected.jsonl")
        return [Instruction.from_dict(r) for r in rows if not str(r.get("source", "")).startswith("kshot:")]

    def eval_task(self) -> Task:
        """The task evaluation runs on: the configured one, or its ``eval.split`` override (training unchanged)."""
        override = self.cfg.eval.get("split")
        if override is None:
            return self.task
        return self.task.with_eval_split(to_container(override), key="eval.split")

    def eval_split_overlap(self, eval_task: Task, method: Method) -> dict[str, Any]:
        """Training items (D_K, D_A) that contain a question of an overridden eval split.

        Selection decontaminates D_A against the task's own eval split only, so evaluating on another split
        checks the training data against it again; a hit is logged as a warning and recorded in metrics.
        """
        from kexpert.data.decontam import EvalIndex, find_overlaps

        index = EvalIndex()
        index.add_examples(eval_task.eval_examples(limit=self.cfg.eval.limit, seed=self.cfg.eval.seed))
        items: list[Instruction] = []
        if method.trains or method.needs_data:
            items += [self.task.to_instruction(e) for e in self.kshot()]
        if method.needs_data:
            items += self.selected_data()
        hits = find_overlaps(items, index)
        evals = sorted({h for v in hits.values() for h in v})
        if hits:
            log.warning(
                "eval.split: %d of %d training items contain %d questions of the evaluated split (e.g. %s); "
                "those scores are contaminated",
                len(hits),
                len(items),
                len(evals),
                ", ".join(evals[:3]),
            )
        return {"train_items_checked": len(items), "train_items_overlapping": len(hits), "eval_items_hit": evals}

    def context(self, loggers: list) -> MethodContext:
        """What the method sees."""
        kshot = self.kshot()
        return MethodContext(
            cfg=self.cfg,
            task=self.task,
            base_spec=self.base_spec,
            kshot=kshot,
            kshot_items=[self.task.to_instruction(e) for e in kshot],
            seed=int(self.cfg.seed),
            get_bank=self.bank,
            get_experts=self.experts,
            get_selected=self.selected_data,
            get_oracle=self.oracle,
            logger=loggers[0] if loggers else None,
        )

    def train_inputs(self) -> dict[str, Any]:
        """Everything that determines the trained artifact."""
        m = self.method
        inputs: dict[str, Any] = {
            "task": _node(self.cfg, "task"),
            "method": m.describe(),
            "base_model": self.base_spec.identity,
        }
        # The K-shot draw and the training seed only enter the key of methods they can change, so the base
        # model, the Expert LoRA and Source Best are built and evaluated once per task, not once per draw.
        if m.trains or m.needs_experts or m.needs_data:
            inputs.update(self._kshot_inputs())
        if m.uses_seed:
            inputs["seed"] = int(self.cfg.seed)
        if m.trains:
            inputs.update(optim=_node(self.cfg, "optim"), trainer=_node(self.cfg, "trainer"))
        if m.uses_bank:
            inputs["bank"] = self._bank_identity()
        if m.needs_experts:
            inputs["experts"] = self.artifacts["experts"].key if "experts" in self.artifacts else None
        if m.needs_data:
            inputs["data"] = self.artifacts["data"].key if "data" in self.artifacts else None
        if m.routes:
            inputs["moe"] = _node(self.cfg, "moe")
        return inputs


def _hydra_choices() -> dict[str, str]:
    """The selected option of every config group (empty outside a Hydra run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except Exception:
        return {}


def _rows_by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = doc.get("entries") or doc.get("loras") or []
    if isinstance(rows, dict):
        return rows
    return {r["name"]: r for r in rows if "name" in r}


def _count_params(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(
        p.numel()
        for n, p in model.named_parameters()
        if "lora" in n.lower() or "router" in n.lower() or "expert" in n.lower()
    )
    return {"total": total, "adapter": trainable}


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        os.symlink(target, link)
    except OSError:  # filesystems without symlinks: a text pointer
        link.with_suffix(".path").write_text(str(target))


def run(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the configured stages; with ``skip_invalid=true`` an invalid grid point is recorded, not raised.

    Returns:
        ``(metrics, objects)``: metrics.json's content and the pipeline / model objects (for tests).
    """
    loggers: list = []
    status = "failed"
    try:
        validate_config(cfg)
        loggers = build_loggers(cfg.get("logger"))
        out = _run(cfg, loggers)
        status = "success"
        return out
    except InvalidGridPoint as e:
        if not cfg.get("skip_invalid", False):
            raise
        log.warning("skipping this grid point: %s", e)
        metrics = {
            "skipped": str(e),
            "method": cfg.method.get("name"),
            "task": cfg.task.get("name"),
            "k_shot": int(cfg.k_shot),
            "data_seed": int(cfg.data_seed),
            "seed": int(cfg.seed),
            "sweep_name": cfg.get("sweep_name"),
        }
        write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
        print(f"skipped: {e}")
        status = "success"
        return metrics, {}
    finally:
        close_loggers(loggers, status)


def _run(cfg: DictConfig, loggers: list) -> tuple[dict[str, Any], dict[str, Any]]:
    t_run = time.perf_counter()
    stages = resolve_stages(cfg.get("stages", "all"))
    pipe = Pipeline(cfg)
    timings: dict[str, float] = {}
    method = pipe.method
    metrics: dict[str, Any] = {
        "method": method.name,
        "label": method.label,
        "task": pipe.task.name,
        "k_shot": int(cfg.k_shot),
        "data_seed": int(cfg.data_seed),
        "seed": int(cfg.seed),
        "stages_run": stages,
        "sweep_name": cfg.get("sweep_name"),
        "tags": list(cfg.get("tags") or []),
        "oracle": method.oracle,
    }
    if cfg.get("moe") is not None:
        metrics.update(num_experts=int(cfg.moe.num_experts), top_k=int(cfg.moe.top_k))
    choices = _hydra_choices()
    for name in ("expert_selection", "data_selection", "encoder", "pool", "moe", "base_model", "bank"):
        node = cfg.get(name)
        if node is not None:
            metrics[name] = choices.get(name) or node.get("name") or node.get("_target_", "").rsplit(".", 1)[-1]
    if cfg.get("data_selection") is not None and cfg.data_selection.get("budget") is not None:
        none = str(cfg.data_selection.get("_target_", "")).endswith("NoDataSelection")
        metrics["budget"] = 0 if none else int(cfg.data_selection.budget)

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 3)
        return out

    objects: dict[str, Any] = {"pipeline": pipe}
    if "kshot" in stages:
        timings_k = timed("kshot", pipe.kshot)
        metrics["kshot_pool"] = pipe.task.kshot_pool_source
        objects["kshot"] = timings_k
    if "experts" in stages and method.needs_experts:
        chosen, _ = timed("experts", pipe.experts)
        metrics["experts"] = chosen
    if "data" in stages and method.needs_data:
        data = timed("data", pipe.selected_data)
        metrics["selected_items"] = len(data)
    model = tok = None
    if "train" in stages:
        ctx = pipe.context(loggers)
        art = timed("train", lambda: pipe.cache.run("train", pipe.train_inputs(), lambda d: method.build(ctx, d)))
        pipe.artifacts["train"] = art
        info = read_json(art.path / "method.json")
        metrics["method_info"] = {k: v for k, v in info.items() if k not in ("objective_history",)}
        if "eval" in stages:
            model, tok = timed("load_model", lambda: method.load(ctx, art.path))
            metrics["params"] = _count_params(model)
            ev = cfg.eval
            eval_task = pipe.eval_task()
            metrics["task_info"] = eval_task.info()
            ev_node = _clean(to_container(ev))
            if ev_node.get("split") is None:
                ev_node.pop("split", None)  # no override: the same key as before eval.split existed
            else:
                metrics["eval_split_overlap"] = pipe.eval_split_overlap(eval_task, method)
            eval_inputs = {
                "train": art.key,
                "task": _node(cfg, "task"),
                "eval": ev_node,
                "per_expert": bool(ev.get("per_expert", False)),
            }

            per_expert = bool(ev.get("per_expert", False)) and method.routes

            def do_eval(d: Path) -> None:
                kwargs = dict(
                    mode=ev.mode,
                    batch_size=ev.batch_size,
                    generate_batch_size=ev.get("generate_batch_size"),
                    max_length=ev.max_length,
                    sandbox_timeout_s=ev.sandbox_timeout_s,
                    progress=ev.progress,
                )
                examples = eval_task.eval_examples(limit=ev.limit, seed=ev.seed)
                res = evaluate(eval_task, model, tok, pipe.base_spec.prompt_format, examples=examples, **kwargs)
                write_jsonl(d / "predictions.jsonl", res.predictions)
                write_json(d / "eval.json", res.metrics)
                if per_expert:
                    from kexpert.eval.per_expert import evaluate_experts_alone

                    names = metrics.get("experts") or [f"expert_{i}" for i in range(int(cfg.moe.num_experts))]
                    write_json(
                        d / "per_expert.json",
                        evaluate_experts_alone(
                            eval_task, model, tok, pipe.base_spec.prompt_format, examples, list(names), **kwargs
                        ),
                    )

            eart = timed("eval", lambda: pipe.cache.run("eval", eval_inputs, do_eval))
            pipe.artifacts["eval"] = eart
            metrics["eval"] = read_json(eart.path / "eval.json")
            if (eart.path / "per_expert.json").exists():
                metrics["per_expert"] = read_json(eart.path / "per_expert.json")
            metrics["score"] = metrics["eval"][metrics["eval"]["primary_metric"]]
    if "report" in stages:
        t0 = time.perf_counter()
        for name, art in pipe.artifacts.items():
            _link(art.path, pipe.out_dir / "artifacts" / name)
        if "eval" in pipe.artifacts:
            rows = read_jsonl(pipe.artifacts["eval"].path / "predictions.jsonl")
            write_jsonl(pipe.out_dir / "predictions.jsonl", rows)
        if model is not None and method.routes and cfg.get("routing_stats", True):
            metrics["routing"] = _routing_report(pipe, model, tok)
        timings["report"] = round(time.perf_counter() - t0, 3)
    metrics["stage_wall_s"] = timings
    metrics["stage_cache"] = {
        n: {"key": a.key, "reused": a.reused, "built_wall_s": a.wall_s, "path": str(a.path)}
        for n, a in pipe.artifacts.items()
    }
    metrics["config_hash"] = sha1_of(to_container(cfg))
    metrics["wall_s"] = round(time.perf_counter() - t_run, 3)
    metrics["provenance"] = provenance()
    write_json(pipe.out_dir / "metrics.json", metrics)
    _log_metrics(loggers, metrics)
    if "score" in metrics:
        ev = metrics["eval"]
        key = ev["primary_metric"]
        lo, hi = ev[f"{key}_ci95"]
        tag = " [ORACLE]" if method.oracle else ""
        print(
            f"{pipe.task.name} {method.label}{tag}: {key} = {100 * metrics['score']:.1f}% "
            f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}, n={ev['n']}) -> {pipe.out_dir}"
        )
    objects.update(model=model, tokenizer=tok)
    return metrics, objects


def _routing_report(pipe: Pipeline, model, tok) -> dict[str, Any]:
    """Fraction of tokens routed to each expert per layer over eval items (the paper's Fig. 7)."""
    from kexpert.models import routing_stats

    ev = pipe.cfg.eval
    examples = pipe.eval_task().eval_examples(limit=min(ev.limit or 100, 100), seed=ev.seed)
    texts = routing_stats.eval_texts(pipe.task, examples, pipe.base_spec.prompt_format, tok)
    names = (
        pipe.artifacts.get("experts") and read_json(pipe.artifacts["experts"].path / "experts.json")["chosen"]
    ) or None
    stats = routing_stats.collect_routing_stats(
        model, tok, texts, expert_names=names, batch_size=ev.batch_size, progress=ev.progress
    )
    paths = routing_stats.write_routing_report(stats, pipe.out_dir / "routing", title=f"{pipe.task.name} routing")
    return {k: str(v) for k, v in paths.items()}


def _log_metrics(loggers: list, metrics: dict[str, Any]) -> None:
    flat = {}
    ev = metrics.get("eval") or {}
    for k, v in ev.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[f"test/{metrics['task']}_{k}"] = v
    for k, v in (metrics.get("stage_wall_s") or {}).items():
        flat[f"time/{k}_s"] = v
    for lg in loggers:
        try:
            lg.log_metrics(flat)
            lg.log_hyperparams(
                {k: metrics[k] for k in ("method", "task", "k_shot", "data_seed", "seed") if k in metrics}
            )
            if hasattr(lg, "experiment") and type(lg).__name__ == "WandbLogger":
                import wandb

                lg.experiment.summary.update({"score": metrics.get("score"), "experts": metrics.get("experts")})
                png = (metrics.get("routing") or {}).get("png")
                if png and Path(png).exists():
                    lg.experiment.log({"routing/heatmap": wandb.Image(png)})
        except Exception as e:  # a logger must never lose a finished run
            log.warning("logger %s failed: %s", type(lg).__name__, e)
