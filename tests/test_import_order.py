"""The apps import one way only, from the floor up:

    gpupaas (settings, logs, metrics, formats) < workspaces < clusters < instances
    < notebooks < access < api < portal < gpupaas (urls, asgi, celery)

A module may import its own app and the apps below it. Presentation modules (the Django
admin, views, urls, template tags, WebSocket consumers and routing, management commands) sit
on top of the whole domain and may also import services and selectors of any app, as the
portal's pages do. Anything else reaching up fails here, with the line that does it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["gpupaas", "workspaces", "clusters", "instances", "notebooks", "access", "api",
         "portal"]
# The project's entry points: they wire every app together.
TOP = {"gpupaas/urls.py", "gpupaas/asgi.py", "gpupaas/celery.py", "gpupaas/wsgi.py",
       "gpupaas/gunicorn.py"}
PRESENTATION = {"admin.py", "views.py", "urls.py", "consumers.py", "routing.py"}


def level(module: str) -> int | None:
    top = module.split(".")[0]
    return ORDER.index(top) if top in ORDER else None


def upward_imports() -> list[str]:
    found = []
    for app in ORDER:
        for path in sorted((ROOT / app).rglob("*.py")) if (ROOT / app).exists() else []:
            relative = path.relative_to(ROOT).as_posix()
            if "migrations" in path.parts or relative in TOP:
                continue
            if path.name in PRESENTATION or {"management", "templatetags"} & set(path.parts):
                continue
            own = ORDER.index(app)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    target = level(name)
                    if target is not None and target > own:
                        found.append(f"{relative}:{node.lineno} imports {name}")
    return found


def test_no_app_imports_an_app_above_it():
    assert upward_imports() == []


def test_views_are_imported_by_url_configurations_only():
    """Helpers that other apps need live in selectors or services, never in a views
    module."""
    found = []
    for app in ORDER:
        for path in sorted((ROOT / app).rglob("*.py")):
            if path.name == "urls.py" or "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                        and node.module.split(".")[0] in ORDER
                        and node.module.endswith(".views")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
    assert found == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a services module of the floor importing instances is caught."""
    fake = tmp_path / "workspaces"
    fake.mkdir()
    (fake / "services.py").write_text("def f():\n    from instances.models import Instance\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    monkeypatch.setattr(f"{__name__}.ORDER", ["workspaces", "instances"])
    assert upward_imports() == ["workspaces/services.py:2 imports instances.models"]


def test_every_status_transition_has_a_named_audit_action():
    """Transitions are audited as AuditAction.status(kind, status): each status of an
    instance and a notebook must be a member, or its transition would fail to record."""
    from instances.models import Instance
    from notebooks.models import Notebook
    from workspaces.models import AuditAction

    for kind, statuses in (("instance", Instance.Status), ("notebook", Notebook.Status)):
        for status in statuses:
            assert AuditAction.status(kind, status).value == f"{kind}.{status}"
