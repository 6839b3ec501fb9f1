import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from portal.catalogue import seed_catalogue, seed_groups
from workspaces.services import ensure_workspace


class Command(BaseCommand):
    help = (
        "Seed the default catalogue; on a database without users, create `admin` and `demo` "
        "(password from DEMO_PASSWORD, else generated and printed once)."
    )

    def handle(self, *args, **options) -> None:
        created = seed_catalogue()
        groups = seed_groups()
        if any(created.values()):
            self.stdout.write(
                f"Catalogue seeded: {created['compute_profiles']} compute profiles, "
                f"{created['notebook_profiles']} notebook profiles."
            )
        User = get_user_model()
        if User.objects.exists():
            return
        password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@example.com", password)
        demo = User.objects.create_user("demo", "demo@example.com", password)
        demo.groups.add(groups["Users"])
        ensure_workspace(user=demo)
        if os.environ.get("DEMO_PASSWORD"):
            shown = "the one in DEMO_PASSWORD"
        else:
            shown = f"{password}\nThis password is shown once; keep it."
        self.stdout.write(self.style.SUCCESS(
            f"Created users `admin` (administrator) and `demo` (end user), password: {shown}"
        ))
