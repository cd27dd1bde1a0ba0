r"""What text of an item is embedded for Sim-Div selection (docs/method.md §5).

The paper embeds instruction and output together, ``u_i = h([x_i, y_i])``; the official script uses
``"instruction:<x>\ninput:<in>\noutput:<y>"``. The template is a config key (``embedding.text_template``);
the encoder adds its own prefix (BGE-M3's retrieval instruction). Texts are capped at ``max_chars`` characters
before tokenisation (the encoder truncates at its token limit anyway; this only avoids tokenising huge texts).
"""

from __future__ import annotations

import re

from kexpert.data.records import Example, Instruction
from kexpert.utils.errors import ConfigError

DEFAULT_TEMPLATE = "{instruction}\n{input}\n{output}"


def item_text(item: Instruction, template: str = DEFAULT_TEMPLATE, max_chars: int | None = 4000) -> str:
    """The text embedded for one instruction item.

    Args:
        item: The item.
        template: Format string with ``{instruction}``, ``{input}``, ``{output}``.
        max_chars: Keep at most this many characters (``None`` = all).

    Returns:
        The text; blank lines left by an empty ``input`` collapse to one line break.
    """
    try:
        text = template.format(instruction=item.instruction, input=item.input, output=item.output)
    except (KeyError, IndexError) as e:
        raise ConfigError(
            f"embedding.text_template {template!r}: unknown field {e}; use {{instruction}}, {{input}}, {{output}}"
        ) from e
    text = re.sub(r"\n\s*\n", "\n", text).strip()
    return text[:max_chars] if max_chars else text


def eval_segments(ex: Example) -> list[str]:
    """The prompt parts of an eval item that must not leak into the pool: question and passage."""
    return [p for p in (ex.question, ex.context or "") if p.strip()]


def eval_answers(ex: Example) -> list[str]:
    """The answer parts of an eval item: gold text (MBPP: reference code) and worked solution (GSM8K)."""
    return [p for p in (ex.gold_text, ex.rationale or "") if p.strip()]
