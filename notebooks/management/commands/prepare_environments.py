from django.core.management.base import BaseCommand

from clusters.backends import BackendError
from clusters.backends.local import environments

from ...models import NotebookProfile


class Command(BaseCommand):
    help = ("Build the local backend's notebook environments ahead of time (one per profile "
            "and package list, with uv), so no first notebook waits for one.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("profiles", nargs="*", help="profile names (default: all published)")
        parser.add_argument("--rebuild", action="store_true", help="build again from scratch")

    def handle(self, *args, profiles: list[str], rebuild: bool, **options) -> None:
        chosen = NotebookProfile.objects.filter(published=True)
        if profiles:
            chosen = NotebookProfile.objects.filter(name__in=profiles)
        for profile in chosen:
            missing = environments.missing_commands(profile.requires)
            if missing:
                self.stdout.write(f"{profile.name}: unavailable on this machine, {missing}")
                continue
            env = environments.environment(profile.name, profile.packages)
            try:
                seconds = environments.build_now(env, rebuild=rebuild)
            except BackendError as exc:
                self.stderr.write(f"{profile.name}: {exc.message}\n{exc.detail}")
                continue
            took = f"built in {seconds:.1f} s" if seconds else "already built"
            count = len(env.packages)
            self.stdout.write(f"{profile.name}: {took} ({count} package{'s' if count != 1 else ''}"
                              f") at {env.path}")
