"""The two Kubernetes API servers the backend tests run against, behind one interface.

``emulator``: ``kubeemu`` in this process. ``real``: kube-apiserver and friends from
``$KUBEBUILDER_ASSETS`` (see ``envtest``). Either way the portal reaches it through
``kubeproxy``, which counts requests and injects faults the same way for both; tests arrange
state and play controllers directly (``get``, ``objects``, ``delete_object``,
``client_configuration``: no proxy, no faults, not counted).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from . import kubeemu, kubeproxy


class EmulatorTarget:
    real = False

    def __init__(self, emulator: kubeemu.Emulator) -> None:
        self.emulator = emulator
        self.proxy = kubeproxy.start(emulator.url)
        self.requests = self.proxy.requests

    def __getattr__(self, name: str) -> Any:  # get, objects, delete_object, add_hook...
        return getattr(self.emulator, name)

    def close(self) -> None:
        self.proxy.stop()

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def faults(self) -> kubeproxy.Faults:
        return self.proxy.faults

    @faults.setter
    def faults(self, value: kubeproxy.Faults | None) -> None:
        self.proxy.faults = value

    @property
    def auto_ready(self) -> bool:
        return self.emulator.auto_ready

    @auto_ready.setter
    def auto_ready(self, value: bool) -> None:
        self.emulator.auto_ready = value

    def kubeconfig(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """The portal's kubeconfig: through the proxy."""
        out = self.emulator.kubeconfig(path, **kwargs)
        config = yaml.safe_load(out.read_text())
        config["clusters"][0]["cluster"]["server"] = self.proxy.url
        out.write_text(yaml.safe_dump(config, sort_keys=False))
        return out
