"""How numbers read on every page: formatters any app may import (the floor of the import
order, with gpupaas.logs and gpupaas.metrics)."""

import unicodedata
from decimal import Decimal


def cores(value: Decimal | float | int | str) -> str:
    """CPU cores as people write them: 8, 0.5 (never 8.0)."""
    return f"{Decimal(value).normalize():f}"


def gpus_phrase(n: int) -> str:
    """GPU counts as people say them: no GPU, 1 GPU, 2 GPUs."""
    return "no GPU" if not n else f"{n} GPU{'' if n == 1 else 's'}"


def one_line(text: str) -> str:
    """A name as it may stand in a page, a log line or a mail header: control characters
    (newlines, tabs, escapes, bidi overrides) become spaces, runs of spaces one."""
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c
                      for c in text)
    return " ".join(cleaned.split())
