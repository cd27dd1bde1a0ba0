"""Parameter counts and peak-GPU-memory estimates of every stage of a run (``python -m kexpert.plan``).

Nothing is loaded: the base model is instantiated from its config on the ``meta`` device (exact parameter counts
and layer shapes), and memory is counted tensor by tensor. The training estimate counts what autograd keeps for
the backward pass of one decoder layer with the LoRA-MoE on its target linears (the frozen base saves nothing for
its own weights), per token:

* RMSNorm inputs, kept in fp32 (``4h`` each, two per layer);
* router inputs (``4h``: one fp32 copy shared by q/v, or one bf16 copy per router under autocast);
* per adapted linear: the dropout mask (1 byte per element on a GPU, the activation dtype on a CPU) and the
  expert input (adapter dtype, bf16 under autocast), plus the ``(T, N*r)`` intermediates;
* attention: q, k, v and the output (flash / memory-efficient SDPA: nothing quadratic) plus the log-sum-exp;
* the SwiGLU MLP: gate, SiLU(gate) and up (``3f`` in the activation dtype);

plus, once, the loss: the fp32 log-softmax over the vocabulary, its gradient and the NLL gradient
(``12 V`` bytes per token). The first layer saves neither its input norm nor its dropout masks (its input needs no
gradient). Peak = weights + gradients + AdamW moments (trainable, in the adapter dtype) + those activations.
With activation checkpointing only each layer's input (``h`` per token) is kept, plus one layer recomputed.
``tests/unit/test_plan.py`` checks the estimate against the measured peak of the 2-layer 7B-shaped model on CPU.
GPU figures are estimates until ``scripts/gpu_acceptance.sh`` has measured them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from kexpert.models import tiny
from kexpert.models.factory import BaseModelSpec
from kexpert.utils.instantiate import instantiate

GB = 1e9
ENCODERS = {  # published configs (the hub is not needed to plan): params, hidden, FFN, layers
    "BAAI/bge-m3": {"params": 567_754_752, "hidden": 1024, "ffn": 4096, "layers": 24},
    "sentence-transformers/all-MiniLM-L6-v2": {"params": 22_713_216, "hidden": 384, "ffn": 1536, "layers": 6},
}
ATTN_INPUT, MLP_INPUT = {"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"}


@dataclass(frozen=True)
class Shape:
    """What memory depends on, read from a config: layer count, widths, vocabulary, exact parameter counts."""

    arch: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_dim: int
    vocab: int
    params: int
    linears: dict[str, tuple[int, int]]  # one decoder layer's nn.Linear name -> (in, out)

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (linears; norms are negligible)."""
        return sum(i * o for i, o in self.linears.values())


@dataclass(frozen=True)
class Precision:
    """Bytes per element: base weights, activations, adapters (experts, routers), dropout masks; autocast or not."""

    weights: int
    act: int
    adapter: int = 4
    mask: int = 1
    autocast: bool = False

    @classmethod
    def of(cls, dtype: str, trainer_precision: str, adapter_dtype: str = "float32", device: str = "cuda"):
        """From ``base_model.dtype`` (``auto`` = bf16 on a GPU), ``trainer.precision`` and ``moe.adapter_dtype``."""
        w = {"auto": 2 if device == "cuda" else 4, "float32": 4, "fp32": 4}.get(str(dtype), 2)
        autocast = "mixed" in str(trainer_precision) and device == "cuda"
        act = 2 if autocast or w == 2 else 4
        adapter = 4 if adapter_dtype == "float32" else w
        return cls(weights=w, act=act, adapter=adapter, mask=1 if device == "cuda" else act, autocast=autocast)


def model_config(spec: BaseModelSpec):
    """The transformers config of a base-model spec, without weights (known architectures need no hub)."""
    kw = dict(spec.tiny or {})
    if kw.get("arch"):
        return tiny.arch_config(kw.pop("arch"), **{k: v for k, v in kw.items() if k not in ("seed",)})
    if spec.tiny is not None:
        return tiny.build_tiny_llama(vocab_size=len(tiny.build_byte_tokenizer()), **kw).config
    if spec.name in tiny.ARCHITECTURES:
        return tiny.arch_config(spec.name)
    from transformers import AutoConfig

    source, kwargs = spec.resolve_source()
    return AutoConfig.from_pretrained(source, trust_remote_code=spec.trust_remote_code, **kwargs)


def shape_of(config) -> Shape:
    """Instantiate ``config`` on the meta device and read its shapes."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layer = model.model.layers[0]
    linears = {
        n.rsplit(".", 1)[-1]: (m.in_features, m.out_features)
        for n, m in layer.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Shape(
        arch=type(model).__name__,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        ffn=config.intermediate_size,
        heads=heads,
        kv_dim=(getattr(config, "num_key_value_heads", None) or heads) * head_dim,
        vocab=config.vocab_size,
        params=sum(p.numel() for p in model.parameters()),
        linears=linears,
    )


def adapter_params(shape: Shape, targets: list[str], rank: int, experts: int, router: bool) -> tuple[int, int]:
    """``(expert params, router params)`` of LoRA experts on ``targets`` in every layer."""
    mods = [shape.linears[t] for t in targets if t in shape.linears]
    lora = sum(rank * (i + o) for i, o in mods) * experts * shape.layers
    return lora, (sum(i for i, _ in mods) * experts * shape.layers if router else 0)


def layer_activation_bytes(
    shape: Shape, p: Precision, targets: list[str], rank: int, experts: int, router: bool, dropout: bool, first: bool
) -> float:
    """Bytes one decoder layer keeps for backward, per token (see the module docstring)."""
    h, f = shape.hidden, shape.ffn
    mods = [(t, shape.linears[t][0]) for t in targets if t in shape.linears]
    total = 0.0 if first else 4 * h + 4  # input norm (fp32) + rsqrt; the first layer's input needs no gradient
    total += 4 * h + 4 + 4 * shape.heads  # post-attention norm, attention log-sum-exp
    total += p.act * (2 * h + 2 * shape.kv_dim) + 3 * p.act * f  # SDPA q, k, v, out; MLP gate, silu, up
    groups: set[str] = set()
    for name, d_in in mods:
        x_bytes = 2 if p.autocast else p.adapter
        if router:
            group = "attn" if name in ATTN_INPUT else "mlp" if name in MLP_INPUT else name
            if p.autocast or p.adapter != p.act:
                total += x_bytes * d_in  # each router casts its input
            elif group not in groups:
                total += p.act * d_in  # one fp32 input shared by the routers of q/k/v (or gate/up)
            groups.add(group)
            total += 12 * 2 + 4 * experts + 2 * experts * rank * x_bytes  # top-k, gates, (T, N*r) twice
        else:
            total += rank * x_bytes
        if dropout and not first:
            total += p.mask * d_in
        total += x_bytes * d_in if (dropout or p.adapter != p.act or p.autocast) else 0
    return total


@dataclass
class TrainMemory:
    """Peak-memory terms of a training step, in bytes (``activations_ckpt``: with activation checkpointing)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    activations_ckpt: float
    loss: float
    sharded_over: int = 1
    extra: float = 0.0

    @property
    def peak(self) -> float:
        """Without activation checkpointing."""
        return self.weights + self.gradients + self.optimizer + self.extra + self.activations + self.loss

    @property
    def peak_ckpt(self) -> float:
        """With activation checkpointing (the recomputed layer replaces the loss buffers at the peak)."""
        return self.weights + self.gradients + self.optimizer + self.extra + self.activations_ckpt


def train_memory(
    shape: Shape,
    p: Precision,
    *,
    targets: list[str],
    rank: int,
    experts: int,
    router: bool,
    dropout: bool,
    micro_batch: int,
    seq_len: int,
    strategy: str = "single",
    gpus: int = 1,
) -> TrainMemory:
    """Peak memory of one training step of a LoRA (``experts=1, router=False``) or LoRA-MoE on ``shape``."""
    lora, routers = adapter_params(shape, targets, rank, experts, router)
    trainable = lora + routers
    tokens = micro_batch * seq_len
    kw = dict(targets=targets, rank=rank, experts=experts, router=router, dropout=dropout)
    layer = layer_activation_bytes(shape, p, first=False, **kw)
    first = layer_activation_bytes(shape, p, first=True, **kw)
    final_norm = 4 * shape.hidden + 4
    acts = tokens * (first + (shape.layers - 1) * layer + final_norm)
    loss = tokens * 12 * shape.vocab
    ckpt = tokens * (shape.layers * p.act * shape.hidden + final_norm) + max(loss, tokens * layer)
    shard = gpus if strategy in ("fsdp", "deepspeed") else 1
    weights = (shape.params * p.weights + trainable * p.adapter) / shard
    grads, optim = trainable * p.adapter / shard, trainable * 8 / shard
    extra = 0.0
    if strategy == "ddp":
        extra = trainable * p.adapter  # gradient buckets
    elif strategy == "fsdp" and shard > 1:
        extra = 2 * shape.vocab * shape.hidden * p.act  # the largest unit (LM head) unsharded, plus prefetch
    elif strategy == "deepspeed" and shard > 1:
        extra = trainable * 4 / shard + 2 * 5e7 * p.act  # fp32 master weights; ZeRO-3 prefetch buckets
    return TrainMemory(weights, grads, optim, acts, ckpt, loss, shard, extra)


def inference_bytes(shape: Shape, p: Precision, batch: int, seq_len: int, cached_tokens: int = 0) -> dict[str, float]:
    """Weights, the largest transient of a forward (residual, norm, q/k/v, MLP) and the KV cache."""
    t = batch * seq_len
    transient = t * p.act * (4 * shape.hidden + 2 * shape.kv_dim + 3 * shape.ffn)
    kv = 2 * shape.layers * batch * cached_tokens * shape.kv_dim * p.act
    return {"weights": shape.params * p.weights, "activations": transient, "kv_cache": kv}


@dataclass
class StageEstimate:
    """One stage of the plan."""

    stage: str
    what: str
    params_total: int
    trainable: dict[str, int] = field(default_factory=dict)
    terms_gb: dict[str, float] = field(default_factory=dict)
    peak_gb: float = 0.0
    peak_ckpt_gb: float | None = None


def _strategy(cfg_trainer: DictConfig) -> str:
    s = cfg_trainer.get("strategy")
    name = (s.get("_target_", "") if isinstance(s, DictConfig) else str(s or "")).lower()
    return next((k for k in ("fsdp", "deepspeed", "ddp") if k in name), "single")


def _gb(terms: dict[str, float]) -> dict[str, float]:
    return {k: round(v / GB, 2) for k, v in terms.items()}


@dataclass(frozen=True)
class _Setup:
    shape: Shape
    prec: Precision
    targets: list[str]
    rank: int
    strategy: str
    gpus: int

    def train(self, stage: str, what: str, experts: int, router: bool, mb: int, seq: int, drop: float):
        mem = train_memory(
            self.shape,
            self.prec,
            targets=self.targets,
            rank=self.rank,
            experts=experts,
            router=router,
            dropout=drop > 0,
            micro_batch=mb,
            seq_len=seq,
            strategy=self.strategy,
            gpus=self.gpus,
        )
        lora, routers = adapter_params(self.shape, self.targets, self.rank, experts, router)
        terms = {k: getattr(mem, k) for k in ("weights", "gradients", "optimizer", "activations", "loss")}
        terms["activations_ckpt"] = mem.activations_ckpt
        if mem.extra:
            terms["sharding_extra"] = mem.extra
        trainable = {"experts": lora, "routers": routers} if router else {"lora": lora}
        total = self.shape.params + lora + routers
        peak, ckpt = round(mem.peak / GB, 2), round(mem.peak_ckpt / GB, 2)
        return StageEstimate(stage, what, total, trainable, _gb(terms), peak, ckpt)

    def infer(self, stage: str, what: str, batch: int, seq: int, cached: int = 0, adapters: int = 0):
        terms = inference_bytes(self.shape, self.prec, batch, seq, cached)
        terms["adapters"] = adapters * self.prec.adapter
        total = self.shape.params + adapters
        return StageEstimate(stage, what, total, {}, _gb(terms), round(sum(terms.values()) / GB, 2))


def _encoder_stage(enc: Any) -> StageEstimate | None:
    info = ENCODERS.get(str(enc.get("model")))
    if not info:
        return None
    b, s = int(enc.get("batch_size", 32)), int(enc.get("max_seq_length", 512))
    w = 4 if enc.get("dtype", "float32") == "float32" else 2
    terms = {"weights": info["params"] * w, "activations": b * s * w * (4 * info["hidden"] + 2 * info["ffn"])}
    what = f"encoder {enc.get('model')} ({w * 8}-bit), batch {b} x {s}"
    return StageEstimate("data", what, info["params"], {}, _gb(terms), round(sum(terms.values()) / GB, 2))


def plan(cfg: DictConfig, gpus: int | None = None, lora_rank: int | None = None, device: str = "cuda") -> dict:
    """Estimates for every GPU stage of ``cfg`` (a composed ``train.py`` config)."""
    spec: BaseModelSpec = instantiate(cfg.base_model, key="base_model")
    moe, bank, tr = cfg.moe, cfg.get("bank") or {}, cfg.trainer
    bank_lora = bank.get("lora") or {}
    strategy = _strategy(tr)
    devices = tr.get("devices", 1)
    n_gpus = 1 if strategy == "single" else int(gpus or (devices if isinstance(devices, int) and devices > 0 else 8))
    setup = _Setup(
        shape=shape_of(model_config(spec)),
        prec=Precision.of(spec.dtype, tr.get("precision", "32-true"), moe.get("adapter_dtype", "float32"), device),
        targets=list(moe.get("target_modules") or bank_lora.get("target_modules") or spec.lora_target_modules),
        rank=int(lora_rank or bank_lora.get("r") or 16),
        strategy=strategy,
        gpus=n_gpus,
    )
    shape, rank, targets = setup.shape, setup.rank, setup.targets
    stages: list[StageEstimate] = []
    if bank.get("train"):
        mb, seq = int(bank.train.get("batch_size", 2)), int(bank.train.get("cutoff_len", 1024))
        what = f"train each missing bank LoRA (r={rank}), micro-batch {mb} x {seq}"
        stages.append(setup.train("bank", what, 1, False, mb, seq, float(bank_lora.get("dropout", 0.05))))
    entries = len(bank.get("datasets") or []) or 16
    loras = entries * adapter_params(shape, targets, rank, 1, False)[0]
    sig = cfg.get("expert_selection", {}).get("signals") or {}
    sb, sl = int(sig.get("batch_size", 16)), int(sig.get("max_length", 1024))
    stages.append(
        setup.infer("experts", f"K-shot signals of {entries} LoRAs at once, batch {sb} x {sl}", sb, sl, 0, loras)
    )
    gb, new = int(sig.get("generate_batch_size", 32)), int((sig.get("rationale") or {}).get("max_new_tokens", 160))
    what = f"K-shot accuracy / rationales, {gb} rows x ({sl} + {new}) tokens"
    stages.append(setup.infer("experts:generate", what, gb, sl, sl + new, loras))
    encoder = _encoder_stage(cfg.get("encoder") or {})
    if encoder:
        stages.append(encoder)
    sft, n_exp = cfg.get("sft") or {}, int(moe.num_experts)
    mb, seq = int(sft.get("batch_size", 2)), int(sft.get("cutoff_len", 1024))
    acc = int(tr.get("accumulate_grad_batches", 1) or 1)
    what = f"LoRA-MoE N={n_exp} k={moe.top_k} r={rank} on {','.join(targets)}, micro-batch {mb} x {seq} (x{acc})"
    stages.append(setup.train("train", what, n_exp, True, mb, seq, float(moe.get("lora_dropout", 0.05))))
    ev, task = cfg.get("eval") or {}, cfg.get("task") or {}
    moe_params = sum(adapter_params(shape, targets, rank, n_exp, True))
    eb, el = int(ev.get("batch_size", 8)), int(ev.get("max_length", 2048))
    stages.append(setup.infer("eval:loglikelihood", f"batch {eb} x {el} tokens", eb, el, 0, moe_params))
    gb, new = int(ev.get("generate_batch_size", 32)), int(task.get("max_new_tokens", 32))
    what = f"{gb} rows x ({el} + {new}) tokens"
    stages.append(setup.infer("eval:generate", what, gb, el, el + new, moe_params))
    return {
        "base_model": spec.name,
        "shape": {k: v for k, v in asdict(shape).items() if k != "linears"},
        "precision": asdict(setup.prec),
        "strategy": strategy,
        "gpus": n_gpus,
        "stages": [asdict(s) for s in stages],
    }


def fits(peak_gb: float, gpu_mem_gb: float) -> bool:
    """A peak fits when it stays under the card's memory less 10% (allocator fragmentation) and 1 GB (CUDA context)."""
    return peak_gb <= 0.9 * gpu_mem_gb - 1.0


def format_plan(p: dict, gpu_mem_gb: float) -> str:
    """The plan as a text table: one line per stage, then its terms."""
    s = p["shape"]
    lines = [
        f"base model {p['base_model']}: {s['arch']}, {s['layers']} layers, hidden {s['hidden']}, FFN {s['ffn']}, "
        f"vocab {s['vocab']}, {s['params'] / 1e9:.3f}B parameters",
        f"precision (bytes) {p['precision']}; strategy {p['strategy']} on {p['gpus']} GPU(s) of {gpu_mem_gb:g} GB",
        "peak GPU memory per GPU, ESTIMATED until measured on a GPU (tensor bytes, as max_memory_allocated;",
        "worst case: every sequence at the cutoff / max_length); fits = under 90% of the card less 1 GB",
        "",
        f"{'stage':<19} {'params':>8}  {'trainable':<31} {'peak GB':>8} {'w/ ckpt':>8}  fits",
    ]
    for st in p["stages"]:
        trainable = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in st["trainable"].items()) or "-"
        ckpt = st["peak_ckpt_gb"]
        fit = "yes" if fits(st["peak_gb"], gpu_mem_gb) else "ckpt" if ckpt and fits(ckpt, gpu_mem_gb) else "NO"
        ck = f"{ckpt:.2f}" if ckpt is not None else "-"
        params = f"{st['params_total'] / 1e9:>7.3f}B"
        lines.append(f"{st['stage']:<19} {params}  {trainable:<31} {st['peak_gb']:>8.2f} {ck:>8}  {fit}")
        lines.append(f"    {st['what']}; GB: " + ", ".join(f"{k} {v}" for k, v in st["terms_gb"].items()))
    return "\n".join(lines)


def summary(p: dict) -> dict[str, Any]:
    """``{stage: peak GB}`` (for scripts)."""
    return {st["stage"]: st["peak_gb"] for st in p["stages"]}
