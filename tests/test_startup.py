"""What a portal process loads as it starts: the official Kubernetes client (seconds of
CPU) only where the portal has a Kubernetes cluster, and then before its first request or
task rather than during it."""

import os
import subprocess
import sys

from django.conf import settings

from clusters.models import Cluster

from .conftest import ROOT

SCRIPT = """
import sys, django
django.setup()
before = "kubernetes" in sys.modules
from clusters.backends import preload
print(before, preload(), "kubernetes" in sys.modules)
"""


def start(script: str) -> str:
    db = settings.DATABASES["default"]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "gpupaas.settings",
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
                           f"{db['PORT'] or 5432}/{db['NAME']}"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_the_kubernetes_client_loads_at_start_only_where_a_cluster_needs_it(transactional_db):
    assert start(SCRIPT) == "False False False"  # local clusters only: never imported

    Cluster.objects.create(name="gpu", display_name="GPU cluster", backend="kubernetes")
    assert start(SCRIPT) == "False True True"  # a web or Celery worker preloads it
