"""One reconcile pass now, as beat runs it every RECONCILE_INTERVAL_S: the first thing to run
after a restore (docs/operations.md), before anyone can launch."""

from typing import Any

from django.core.management.base import BaseCommand

from instances.services import reconcile_instances
from notebooks.services import reconcile_notebooks


class Command(BaseCommand):
    help = ("Run one reconcile pass over instances, then notebooks and services; print what "
            "it did (re-driven, observed, quarantined, held back, errors).")

    def handle(self, *args: Any, **options: Any) -> None:
        instances = vars(reconcile_instances())
        self.stdout.write("instances: " + " ".join(f"{k}={v}" for k, v in instances.items()))
        deployments = reconcile_notebooks()
        self.stdout.write("notebooks and services: "
                          + " ".join(f"{k}={v}" for k, v in deployments.items()))
        if instances["held"]:
            self.stderr.write(self.style.ERROR(
                f"{instances['held']} unknown instances were left alone: more than one pass "
                "may quarantine. See the admin's overview before anything else."))
