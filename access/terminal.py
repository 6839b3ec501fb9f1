"""What starts a local sandbox's browser terminal, as a process of its own.

Standard library only: the portal runs this file's text with `python -I -S -c <text>
<config>` in a pseudo-terminal whose other end is the browser (access/shell.py). It becomes
the leader of a session of its own with the terminal as its controlling terminal (Ctrl-C
reaches what runs; closing the terminal ends everything), sets the resource limits that
everything started from here inherits, and execs the login shell the local backend gave
(which enters the sandbox's limits and becomes the workspace's OS user).

Shells on Kubernetes instances run nowhere near here: in a pod of the instance
(access/shellpod.py).
"""

from __future__ import annotations

import json
import os
import sys


def _take_terminal() -> None:
    """Lead a session of our own, with the terminal on stdin as its controlling terminal."""
    import fcntl
    import termios

    if os.getsid(0) != os.getpid():
        os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _limit(config: dict) -> None:
    import resource

    def cap(which: int, value: int) -> None:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # only ever lowered
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_CORE, 0)
    if config.get("limits", {}).get("open_files"):
        cap(resource.RLIMIT_NOFILE, int(config["limits"]["open_files"]))


def main(argv: list[str]) -> None:
    config = json.loads(argv[1])
    _take_terminal()
    _limit(config)
    os.execv(config["argv"][0], config["argv"])


if __name__ == "__main__":
    main(sys.argv)
