import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from portal.catalogue import seed_catalogue, seed_groups
from workspaces.services import ensure_workspace


class Command(BaseCommand):
    help = (
        "Seed the default catalogue; on a database without users, create `admin` and `demo` "
        "(passwords from ADMIN_PASSWORD and DEMO_PASSWORD, else generated, each its own, and "
        "printed once)."
    )

    def handle(self, *args, **options) -> None:
        created = seed_catalogue()
        groups = seed_groups()
        if any(created.values()):
            self.stdout.write(
                f"Catalogue seeded: {created['compute_profiles']} compute profiles, "
                f"{created['notebook_profiles']} notebook profiles, "
                f"{created['service_profiles']} services."
            )
        User = get_user_model()
        if User.objects.exists():
            return
        lines = []
        for username, variable in (("admin", "ADMIN_PASSWORD"), ("demo", "DEMO_PASSWORD")):
            # Each its own: the demo password, shown to anyone trying the portal, must not
            # open the administrator's account.
            password = os.environ.get(variable) or secrets.token_urlsafe(12)
            if username == "admin":
                User.objects.create_superuser("admin", "admin@example.com", password)
            else:
                demo = User.objects.create_user("demo", "demo@example.com", password)
                demo.groups.add(groups["Users"])
                ensure_workspace(user=demo)
            shown = f"the one in {variable}" if os.environ.get(variable) else password
            lines.append(f"  {username:<6} password: {shown}")
        self.stdout.write(self.style.SUCCESS(
            "Created users `admin` (administrator) and `demo` (end user):\n"
            + "\n".join(lines) + "\nGenerated passwords are shown once; keep them."))
