"""How numbers read on every page: formatters any app may import (the floor of the import
order, with gpupaas.logs and gpupaas.metrics)."""

from decimal import Decimal


def cores(value: Decimal | float | int | str) -> str:
    """CPU cores as people write them: 8, 0.5 (never 8.0)."""
    return f"{Decimal(value).normalize():f}"
