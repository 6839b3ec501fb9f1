"""The `gpupaas` command is a distribution of its own (cli/, gpupaas-cli): installed alone into
an empty virtual environment, it works against a live portal and pulls in none of the
portal's server side."""

import json
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT
from .test_api import token_for


@pytest.fixture(scope="module")
def cli_venv(tmp_path_factory):
    uv = shutil.which("uv", path=str(ROOT / ".venv" / "bin")) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    venv = tmp_path_factory.mktemp("cli") / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    str(ROOT / "cli")], check=True, timeout=300)
    return venv


def test_the_cli_installs_alone_and_works_against_a_live_portal(cli_venv, live_server, alice,
                                                                 catalogue, tmp_path):
    names = {p.name.split("-")[0].lower().replace("_", "-")
             for p in (cli_venv / "lib").glob("python*/site-packages/*.dist-info")}
    assert "gpupaas-cli" in names
    assert not names & {"django", "celery", "kubernetes", "jupyterlab", "gpupaas"}
    assert len(names) < 30, sorted(names)

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPUPAAS_URL": live_server.url,
           "GPUPAAS_TOKEN": token_for(alice, scope="read")}
    gpupaas = str(cli_venv / "bin" / "gpupaas")
    version = subprocess.run([gpupaas, "--version"], capture_output=True, text=True, env=env)
    assert version.stdout.strip() == "gpupaas 0.1.0"
    sizes = subprocess.run([gpupaas, "sizes", "-o", "json"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert sizes.returncode == 0, sizes.stderr
    assert "gpu-1" in {p["name"] for p in json.loads(sizes.stdout)}
    # The shell's module imports too (websockets is its own dependency).
    imported = subprocess.run([str(cli_venv / "bin" / "python"), "-c",
                               "import gpupaas_cli.shell, gpupaas_cli.main"], env=env)
    assert imported.returncode == 0
