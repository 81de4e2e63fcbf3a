"""The prompts of a slide: one for the whole slide, optionally one per class, and a negative one.

Every prompt is encoded once, by the pipeline's own ``encode_prompt`` (the tokenizer padded to
its maximum length, the text encoder's last hidden state), so an embedding here is what
diffusers computes for the same text. The embeddings form one table: row 0 the slide's
prompt, rows 1.. the distinct class prompts, the last row the negative prompt ("" when none,
as in diffusers). ``prompt_of_label`` maps each label (0-255) to its row: a class with its own
prompt gets that row, every other class (label 0 included) the slide's prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SettingsError


@dataclass
class PromptTable:
    embeddings: torch.Tensor  # (prompts + 1, tokens, dim): the prompts, then the negative prompt
    prompt_of_label: np.ndarray  # (256,) int64: the row of each label's prompt
    texts: list[str]  # the prompts, by row (without the negative prompt)

    @property
    def negative_row(self) -> int:
        return self.embeddings.shape[0] - 1


def resolve_class_prompts(class_prompts: dict[int | str, str], class_names: list[str]) -> dict[int, str]:
    """``{label or class name: text}`` -> ``{label: text}``, refusing unknown classes."""
    names = {n.casefold(): i for i, n in enumerate(class_names)}
    resolved: dict[int, str] = {}
    for key, text in class_prompts.items():
        label = key if isinstance(key, int) else names.get(str(key).strip().casefold())
        if label is None and isinstance(key, str) and key.strip().isdigit():
            label = int(key)
        if label is None or not 0 <= label < len(class_names):
            known = ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
            raise SettingsError(f"class prompt for {key!r}: no such class; the classes are {known}")
        if not isinstance(text, str):
            raise SettingsError(f"the prompt of class {key!r} must be text, not {type(text).__name__}")
        resolved[int(label)] = text
    return resolved


@torch.no_grad()
def encode_prompts(
    pipe, prompt: str, negative_prompt: str | None, class_prompts: dict[int, str], device: torch.device
) -> PromptTable:
    """Encode the prompts with ``pipe.encode_prompt`` into a :class:`PromptTable`."""
    texts = [prompt]
    prompt_of_label = np.zeros(256, np.int64)
    for label, text in sorted(class_prompts.items()):
        if text not in texts:
            texts.append(text)
        prompt_of_label[label] = texts.index(text)
    rows = []
    negative = None
    for text in texts:
        embeds, negative = pipe.encode_prompt(text, device, 1, True, negative_prompt)
        rows.append(embeds)
    table = torch.cat([*rows, negative]).float()
    return PromptTable(table, prompt_of_label, texts)
