"""Re-encrypt every secret stored in the database with the current FIELD_ENCRYPTION_KEY
(docs/operations.md, "Rotating secrets"); afterwards the fallbacks can be removed."""

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from clusters.crypto import reencrypt

SUFFIX = "_encrypted"


class Command(BaseCommand):
    help = ("Re-encrypt every stored secret (each model's *_encrypted fields) with "
            "FIELD_ENCRYPTION_KEY; FIELD_ENCRYPTION_KEY_FALLBACKS must still name the old key.")

    def handle(self, *args: Any, **options: Any) -> None:
        done = unreadable = 0
        for model in apps.get_models():
            fields = [f.name for f in model._meta.concrete_fields if f.name.endswith(SUFFIX)]
            for field in fields:
                rows = model._default_manager.exclude(**{field: ""}).values_list("pk", field)
                for pk, token in rows.iterator():
                    try:
                        fresh = reencrypt(token)
                    except ValueError as exc:
                        unreadable += 1
                        self.stderr.write(f"{model._meta.label} {pk} {field}: {exc}")
                        continue
                    with transaction.atomic():  # only if nobody wrote it meanwhile
                        done += model._default_manager.filter(
                            pk=pk, **{field: token}).update(**{field: fresh})
        self.stdout.write(f"{done} secret(s) re-encrypted with FIELD_ENCRYPTION_KEY.")
        if unreadable:
            raise CommandError(f"{unreadable} secret(s) could not be read with any key: keep "
                               "the fallbacks until they are sorted out.")
