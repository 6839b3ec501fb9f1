from django.apps import AppConfig


class NotebooksConfig(AppConfig):
    name = "notebooks"

    def ready(self) -> None:
        from instances.lifecycle import transitioned

        from .services import follow_instance_stop_and_start

        transitioned.connect(follow_instance_stop_and_start,
                             dispatch_uid="notebooks-follow-instance")
