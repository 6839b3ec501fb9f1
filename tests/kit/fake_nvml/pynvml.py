"""A stand-in for NVIDIA's `pynvml` (nvidia-ml-py) on machines without a GPU, for tests: the
GPUs it reports, and how busy each is, come from the JSON file that $FAKE_NVML_STATE names,
read at every call, so a test changes a GPU's load by rewriting the file:

    {"names": ["NVIDIA H100 80GB HBM3", ...], "utilization": {"0": 90}}

Without the variable it behaves as NVML does with no driver loaded. Only the calls the
portal makes are here; a test puts this module in `sys.modules["pynvml"]`."""

import json
import os
from dataclasses import dataclass


class NVMLError(Exception):
    pass


@dataclass(frozen=True)
class Utilization:
    gpu: int
    memory: int


def _state() -> dict:
    path = os.environ.get("FAKE_NVML_STATE")
    if not path:
        raise NVMLError("Driver Not Loaded")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def nvmlInit() -> None:
    _state()


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return len(_state()["names"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < nvmlDeviceGetCount():
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return _state()["names"][handle]


def nvmlDeviceGetUtilizationRates(handle: int) -> Utilization:
    return Utilization(gpu=int(_state().get("utilization", {}).get(str(handle), 0)), memory=0)
