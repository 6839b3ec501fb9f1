"""Notebook profiles are real environments on the local backend: built once with uv, cached,
shared, and without the portal's packages."""

import time

import pytest
from django.core.exceptions import ValidationError

from clusters.backends.local import environments
from notebooks import services
from notebooks.models import Notebook, NotebookProfile

from .kit.kernel import run_code
from .test_notebooks_local import until

Status = Notebook.Status


@pytest.fixture
def small(catalogue, minimal_environment) -> NotebookProfile:
    """JupyterLab plus a small pure-Python package the portal does not have."""
    return NotebookProfile.objects.create(
        name="small", display_name="Small", image="quay.io/jupyter/minimal-notebook",
        local_packages="jupyterlab>=4.2,<5\ncowsay  # says things", default_cpu=1,
        default_memory_gib=1)


def test_a_profiles_kernel_imports_its_packages_and_not_the_portals(
    alice, alices_instance, small
):
    with pytest.raises(ImportError):
        __import__("cowsay")  # not the portal's: the kernel can only get it from its profile
    started = time.monotonic()
    notebook = services.deploy_notebook(instance=alices_instance, name="talk", profile=small,
                                        by=alice)
    notebook = services.advance_notebook(notebook_id=notebook.pk)
    assert notebook.step == "preparing"
    assert notebook.status_message == "Preparing environment (first time: installing 2 packages)."
    assert [label for label, _ in notebook.steps] == [
        "Created", "Preparing environment", "Starting", "Reachable"]
    notebook = until(notebook, Status.RUNNING, timeout=300)
    first = time.monotonic() - started

    out = run_code(notebook.url, notebook.token, "import cowsay, sys\nprint(sys.prefix)")
    assert out.strip() == str(environments.environment("small", small.packages).path)
    with pytest.raises(RuntimeError, match="ModuleNotFoundError: No module named 'django'"):
        run_code(notebook.url, notebook.token, "import django")

    # A second notebook of the profile shares the environment: no preparing at all.
    started = time.monotonic()
    second = services.advance_notebook(notebook_id=services.deploy_notebook(
        instance=alices_instance, name="talk-again", profile=small, by=alice).pk)
    assert second.step == "starting"
    until(second, Status.RUNNING)
    print(f"\npreparing environment: first {first:.1f} s, cached "
          f"{time.monotonic() - started:.1f} s (deploy to running)")


def test_a_profile_needing_a_missing_command_is_unavailable_before_the_click(
    alice, alice_client, alices_instance, small
):
    small.local_requires = "java-that-is-not-here"
    small.save()

    page = alice_client.get(f"/notebooks/new/?instance={alices_instance.pk}").content.decode()
    assert ("Small: unavailable on this machine, needs java-that-is-not-here, which this "
            "machine does not have.") in page
    with pytest.raises(ValidationError, match="Small is unavailable on this machine"):
        services.deploy_notebook(instance=alices_instance, name="x", profile=small, by=alice)
    assert not Notebook.objects.exists()


def test_a_package_list_with_options_is_refused_in_the_admin(admin_user, client, catalogue):
    client.force_login(admin_user)
    profile = NotebookProfile.objects.get(name="minimal")
    response = client.post(f"/admin/notebooks/notebookprofile/{profile.pk}/change/", {
        "name": "minimal", "display_name": "Minimal", "image": profile.image,
        "local_packages": "jupyterlab\n--index-url http://evil.example/simple",
        "default_cpu": "1", "default_memory_gib": "4", "default_gpus": "0",
        "sort_order": "0", "published": "on",
    })
    assert response.status_code == 200
    assert "options are not allowed, only package requirements" in response.content.decode()
    profile.refresh_from_db()
    assert "evil" not in profile.local_packages


def test_the_seeded_profiles_list_their_local_packages(catalogue):
    packages = {p.name: (p.packages, p.requires) for p in NotebookProfile.objects.all()}
    assert packages["datascience"][0] == (
        "jupyterlab>=4.2,<5", "numpy", "pandas", "scipy", "scikit-learn", "matplotlib")
    assert packages["spark"] == (("jupyterlab>=4.2,<5", "pyspark"), ("java",))
    assert packages["tensorflow"][0] == ("jupyterlab>=4.2,<5", "tensorflow")


def test_the_data_science_kernel_imports_pandas(alice, alices_instance, catalogue):
    datascience = NotebookProfile.objects.get(name="datascience")
    notebook = services.deploy_notebook(instance=alices_instance, name="frames",
                                        profile=datascience, by=alice)
    notebook = until(notebook, Status.RUNNING, timeout=600)

    out = run_code(notebook.url, notebook.token, "import pandas as pd, sklearn, scipy, "
                   "matplotlib\nprint(pd.DataFrame({'gpus': [1, 2, 4]}).gpus.sum())")
    assert out.strip() == "7"


def test_prepare_environments_builds_ahead_and_names_what_cannot_be_had(
    catalogue, minimal_environment
):
    from io import StringIO

    from django.core.management import call_command

    NotebookProfile.objects.filter(name="spark").update(local_requires="java-that-is-not-here")
    out = StringIO()

    call_command("prepare_environments", "minimal", "spark", stdout=out)

    lines = sorted(out.getvalue().splitlines())
    assert lines[0].startswith(f"minimal: already built (1 package) at {minimal_environment}")
    assert lines[1] == ("spark: unavailable on this machine, needs java-that-is-not-here, "
                        "which this machine does not have.")
