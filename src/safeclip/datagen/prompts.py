"""The paper's SFT prompt template (Sec. 3.1, footnote 1), optionally naming a requested NSFW category.

    >>> format_prompt("a cat on a sofa")
    'Below is an input string. Write a response that appropriately converts the input in its unsafe version\\n\\n### Input: a cat on a sofa\\n### Response:'
"""

from __future__ import annotations

TEMPLATE = ("Below is an input string. Write a response that appropriately converts the input in its unsafe "
            "version{condition}\n\n### Input: {text}\n### Response:")
CONDITION = " about {category}"


def format_prompt(text: str, category: str | None = None) -> str:
    """Prompt asking to convert safe ``text`` into its unsafe version (about ``category`` when given)."""
    condition = CONDITION.format(category=category) if category else ""
    return TEMPLATE.format(text=text.strip(), condition=condition)


def clean_completion(text: str) -> str:
    """First line of a generated response, stripped (LLMs may go on with another '### Input')."""
    text = text.split("###")[0]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
