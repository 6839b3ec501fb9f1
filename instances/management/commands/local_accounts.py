"""The local tenants' OS users: list them, and remove those whose workspace is gone (the
reconcile pass does that too, every RECONCILE_INTERVAL_S)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from clusters.backends import BackendError
from clusters.backends.local import tenants
from workspaces.selectors import workspace_ids


class Command(BaseCommand):
    help = ("List this portal's OS users for local notebooks (name, uid, workspace, what "
            "keeps each); with --remove, remove those nothing keeps.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--remove", action="store_true",
                            help="remove the accounts whose workspace is gone and that own "
                                 "no sandbox, no shared temporary file and no process")

    def handle(self, *args: Any, remove: bool = False, **options: Any) -> None:
        try:
            if not tenants.isolated():
                self.stdout.write("Single-user mode: local notebooks run as the portal's own "
                                  "OS user; there are no workspace accounts.")
                return
            found = tenants.accounts(workspace_ids)
            removed = set(tenants.remove_stale_accounts(workspace_ids)) if remove else set()
        except BackendError as exc:
            raise CommandError(exc.message) from None
        if not found:
            self.stdout.write("No OS users of this portal.")
        for account in found:
            state = ("removed" if account.name in removed
                     else f"kept by {account.kept_by}" if account.kept_by
                     else "workspace gone: removable (--remove)")
            self.stdout.write(f"{account.name}\tuid {account.uid}\tworkspace "
                              f"{account.workspace}\t{state}")

