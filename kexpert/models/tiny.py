"""Random in-memory models and an offline byte-level tokenizer, for tests, debugging and rehearsals.

The tokenizer is a byte-level BPE with no merges (every UTF-8 byte is one token), so it encodes any text,
decodes it back exactly, and needs no download. Its special tokens mirror SmolLM2's (``<|endoftext|>`` = 0,
``<|im_start|>`` = 1, ``<|im_end|>`` = 2, pad = eos) and it carries a ChatML chat template, so chat-mode
code paths are exercised too. LLaMA-2 and Mistral use the same ids for BOS (1) and EOS (2).

Two kinds of random model:

* :func:`build_tiny_llama`: the tiny LLaMA of ``conf/base_model/tiny.yaml`` (hidden 32).
* :func:`build_random_model`: a real architecture of :data:`ARCHITECTURES` (LLaMA-2-7B, Mistral-7B) with
  random weights and any field overridden, e.g. ``num_hidden_layers=2`` for the 7B-shaped CPU rehearsal
  (``conf/base_model/llama2_7b_2layer.yaml``). Its tokenizer is the byte tokenizer padded to the
  architecture's vocabulary (32000), so the embedding and LM-head shapes are the real ones; the padding
  tokens are never produced by encoding and decode to their own names.
"""

from __future__ import annotations

from typing import Any

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


TINY_CONFIG: dict[str, int] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "seed": 0,
}
"""The tiny LLaMA of ``conf/base_model/tiny.yaml``, for code that builds a spec without Hydra (tests, scripts)."""

ARCHITECTURES: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-2-7b-hf config.json (the paper's first model)
    "llama2_7b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    # mistral-community/Mistral-7B-v0.2 config.json (conf/base_model/mistral_7b.yaml). v0.2 has no sliding
    # window (v0.1: 4096, rope_theta 1e4); either way a cutoff of 1024 never reaches it.
    "mistral_7b": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
}
"""Real architectures by name (the hub is not needed to know their shapes): ``build_random_model(arch=...)``."""

SPECIAL_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
"""The byte tokenizer's ids, written into every random model's config."""


def build_byte_tokenizer(vocab_size: int | None = None):
    """A ``PreTrainedTokenizerFast`` over raw bytes with SmolLM2-like special tokens.

    Args:
        vocab_size: Pad the vocabulary with unused ``<|pad_i|>`` tokens up to this size (a real architecture's
            embedding shape); ``None``: the 259 byte and special tokens only.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    if vocab_size is not None:
        if vocab_size < len(vocab):
            raise ValueError(f"vocab_size={vocab_size} is below the {len(vocab)} byte and special tokens")
        for i in range(vocab_size - len(vocab)):
            vocab[f"<|pad_{i}|>"] = len(vocab)  # unreachable without merges: encoding never yields them
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(
    vocab_size: int,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 2048,
    seed: int = 0,
):
    """A random ``LlamaForCausalLM`` with a seeded init (the same weights in every process)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = 2
    model.eval()
    return model


def arch_config(arch: str, **overrides: Any):
    """The transformers config of a named real architecture (:data:`ARCHITECTURES`) with fields overridden.

    Raises:
        ValueError: an unknown architecture name.
    """
    from transformers import AutoConfig

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    fields = {**ARCHITECTURES[arch], **SPECIAL_IDS, **overrides}
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def build_random_model(arch: str, seed: int = 0, **overrides: Any):
    """A named real architecture with random weights (seeded: the same in every process), in eval mode.

    Args:
        arch: A key of :data:`ARCHITECTURES` (``llama2_7b``, ``mistral_7b``).
        seed: Seed of the weight init.
        **overrides: Config fields to change, e.g. ``num_hidden_layers=2``.
    """
    from transformers import AutoModelForCausalLM

    try:  # transformers 5
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights

    cfg = arch_config(arch, **overrides)
    with no_init_weights():  # torch's and transformers' inits would draw every weight twice (~25 s at 0.67B)
        model = AutoModelForCausalLM.from_config(cfg)
    fill_random_(model, seed)
    model.generation_config.pad_token_id = SPECIAL_IDS["pad_token_id"]
    model.eval()
    return model


@torch.no_grad()
def fill_random_(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """One seeded pass over the parameters: norm weights 1, everything else uniform with standard deviation ``std``.

    transformers' own init (normal, std ``initializer_range`` = 0.02) in a third of the time; the same values in
    every process for the same seed.
    """
    gen = torch.Generator().manual_seed(seed)
    bound = std * 3**0.5
    for name, p in model.named_parameters():
        if p.dim() == 1 and "norm" in name:
            p.fill_(1.0)
        else:
            p.uniform_(-bound, bound, generator=gen)
