"""The chaos bench's one-minute smoke run (docs/operations.md; the ten-minute run is the
bench's own): a worker killed mid-task, Redis and PostgreSQL restarted, the API server
down, while users work; afterwards everything accepted reached a final state, nothing is
lost or leaked, and quota and GPU-hours are exact."""

import re
import subprocess
import sys

from .conftest import ROOT


def test_a_minute_of_chaos_converges_with_nothing_lost_or_leaked():
    run = subprocess.run(
        [sys.executable, "bench/chaos.py", "--minutes", "1", "--settle", "180", "--seed", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stderr[-3000:]
    line = run.stdout.strip().splitlines()[-1]
    figures = dict(re.findall(r"(\w+)=([\d.]+)", line))
    assert line.startswith("chaos: "), run.stdout[-2000:]
    assert int(figures["actions"]) > 20 and int(figures["faults"]) >= 3, line
    assert (figures["converged"], figures["lost"], figures["leaked"],
            figures["quota_errors"]) == ("100", "0", "0", "0"), run.stdout[-3000:]
