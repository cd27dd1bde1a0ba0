"""The model side of prompting: how a task prompt becomes the model's input text.

Task prompts (``conf/task``) say *what* is asked; a :class:`PromptFormat` (``conf/base_model``) says how this
model wants it wrapped: raw text, the tokenizer's own chat template, or an explicit template string such as
alpaca or LLaMA-2 ``[INST]``. Nothing else in kexpert formats prompts, so evaluation, SFT and perplexity
always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from kexpert.utils.errors import ConfigError


@dataclass
class PromptFormat:
    """How to wrap a task prompt for a model.

    Attributes:
        chat_template: Use ``tokenizer.apply_chat_template`` with one user turn and the generation prompt.
        system_prompt: Optional system message (chat mode), ``None`` keeps the template's default.
        template: Explicit template with ``{prompt}`` (used when ``chat_template`` is false); ``"{prompt}"`` is
            raw text.
        response_prefix: Text inserted between the rendered prompt and the response (e.g. ``" "``).
    """

    chat_template: bool = False
    system_prompt: str | None = None
    template: str = "{prompt}"
    response_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.chat_template and "{prompt}" not in self.template:
            raise ConfigError("base_model.prompt_format.template must contain '{prompt}'")

    def render(self, prompt: str, tokenizer=None) -> str:
        """The full input text for a task prompt.

        Args:
            prompt: The task prompt (with few-shot demonstrations already in it).
            tokenizer: Needed in chat mode.
        """
        if self.chat_template:
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise ConfigError("base_model.prompt_format.chat_template=true but the tokenizer has no chat template")
            messages = []
            if self.system_prompt is not None:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": prompt})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + self.response_prefix
        return self.template.format(prompt=prompt) + self.response_prefix

    def response(self, target: str) -> str:
        """The response text as it follows the rendered prompt (chat responses start without a space)."""
        return target.lstrip() if self.chat_template else target
