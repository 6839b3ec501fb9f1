"""Local notebooks get the limits of their size, enforced by the kernel, tried from a real
kernel of a real JupyterLab as a tenant would: a memory hog is killed at the notebook's
memory while the neighbour's notebook keeps answering; a fork bomb stops at LOCAL_TASKS_MAX;
with CUDA_VISIBLE_DEVICES unset, another instance's GPU device is still refused; another
workspace's /tmp is not there to see."""

import json
import os
import textwrap
from pathlib import Path

import pytest

from clusters.backends.local import limits
from instances import services as instance_services
from notebooks import services
from notebooks.models import Notebook, NotebookProfile

from .conftest import wait_for, workspace_of
from .kit.kernel import run_code
from .test_local_isolation import server_pid
from .test_notebooks_local import until

Status = Notebook.Status
pytestmark = pytest.mark.skipif(not limits.enforced(), reason=limits.mode_line())


def notebook_on(user, catalogue, name: str, *, memory_gib: int = 1) -> Notebook:
    instance = instance_services.launch_instance(
        workspace=workspace_of(user), name=f"{name}-box", profile=catalogue[1], by=user)
    instance = instance_services.provision_instance(instance_id=instance.pk)
    notebook = services.deploy_notebook(
        instance=instance, name=name, profile=NotebookProfile.objects.get(name="minimal"),
        by=user, gpus=1, cpu=1, memory_gib=memory_gib)
    return until(notebook, Status.RUNNING)


def alive(notebook: Notebook) -> bool:
    return run_code(notebook.url, notebook.token, "print('alive')").strip() == "alive"


def test_a_memory_hog_and_a_fork_bomb_stop_at_their_limits_and_the_neighbour_keeps_running(
        alice, bob, catalogue, minimal_environment, settings, sandbox_root):
    """One pair of notebooks for both (each start costs seconds): the hog first, which
    kills only itself, then the bomb, which may take its own server down with it."""
    hers = notebook_on(alice, catalogue, "hog", memory_gib=1)
    his = notebook_on(bob, catalogue, "calm")
    # The hog runs as a process of the kernel's, which reports how it ended.
    hog = textwrap.dedent("""
        import subprocess, sys
        grab = "chunks = [bytearray(100 * 2**20) for _ in range(40)]; print('not stopped')"
        done = subprocess.run([sys.executable, "-c", grab], capture_output=True, text=True)
        print(done.returncode, done.stdout.strip() or "-")
    """)
    code, said = run_code(hers.url, hers.token, hog, timeout=120).split()
    assert (code, said) == ("-9", "-")  # SIGKILL from the OOM killer, before it finished
    # Only the process that went over was killed: her kernel and server, and bob's, answer.
    assert alive(his)
    assert alive(hers)
    assert int(read_cgroup(hers, "memory", "memory.limit_in_bytes")) == 2**30

    # The bomb forks until the pids controller says no. Its own server shares the cap and
    # may go down with it (the reconcile starts it again); the machine and the neighbour's
    # notebook do not. It reports through a file in its home, which the test reads.
    report = sandbox_root / "local" / hers.instance.key / "bomb.txt"
    bomb = textwrap.dedent(f"""
        import os, time
        pids, refused = [], None
        for _ in range(5000):
            try:
                pid = os.fork()
            except OSError as exc:
                refused = exc.errno
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.kill(pid, 9)
        for pid in pids:
            os.waitpid(pid, 0)
        with open({str(report)!r}, "w") as out:
            out.write(f"{{len(pids)}} {{refused}}")
    """)
    starter = (f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {bomb!r}], "
               "start_new_session=True); print('started')")
    assert run_code(hers.url, hers.token, starter).strip() == "started"
    made, refused = wait_for(lambda: report.exists() and report.read_text().split(),
                             timeout=120)
    assert refused == "11"  # EAGAIN: the pids controller said no
    assert 0 < int(made) < settings.LOCAL_TASKS_MAX
    assert alive(his)


def read_cgroup(notebook: Notebook, controller: str, name: str) -> str:
    """The value a notebook's cgroup holds, as the kernel reports it."""
    pid = server_pid_of(notebook)
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return (Path("/sys/fs/cgroup") / controller / path.lstrip("/") / name).read_text()
    raise AssertionError(f"no {controller} cgroup for pid {pid}")


def server_pid_of(notebook: Notebook) -> int:
    from django.conf import settings

    return server_pid(Path(settings.LOCAL_SANDBOX_ROOT), notebook)


def test_another_instances_gpu_dev_node_and_tmp_are_out_of_reach(
        alice, bob, catalogue, minimal_environment, sandbox_root):
    """One pair of notebooks, three walls.

    GPUs: no GPU here, so the test makes the device nodes (NVIDIA's major, 195): with
    CUDA_VISIBLE_DEVICES unset, the kernel's devices controller answers EPERM for another
    instance's, while its own gets as far as the (absent) driver (ENXIO).
    /dev: what works on cgroup v2 too: the other GPUs' /dev/nvidiaN nodes are covered by
    /dev/null in the notebook's mount namespace (a node made for the test before they start,
    minor 97, which no instance holds).
    /tmp and /dev/shm: another workspace's are not there to see."""
    node = Path("/dev/nvidia97")
    os.mknod(node, 0o20666, os.makedev(195, 97))
    try:
        check_the_walls(alice, bob, catalogue, sandbox_root)
    finally:
        node.unlink()


def check_the_walls(alice, bob, catalogue, sandbox_root) -> None:
    hers = notebook_on(alice, catalogue, "wall-a")
    his = notebook_on(bob, catalogue, "wall-b")
    devices = sandbox_root / "test-devices"  # where the notebook can reach them
    devices.mkdir()
    devices.chmod(0o755)
    for index in {*hers.gpu_indices, *his.gpu_indices}:
        made = devices / f"nvidia{index}"
        os.mknod(made, 0o20666, os.makedev(195, index))
        made.chmod(0o666)
    code = textwrap.dedent(f"""
        import json, os
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        def attempt(index):
            try:
                os.close(os.open({str(devices)!r} + f"/nvidia{{index}}", os.O_RDWR))
                return "opened"
            except OSError as exc:
                return exc.errno
        print(json.dumps({{str(i): attempt(i) for i in {sorted({*hers.gpu_indices,
                                                                *his.gpu_indices})!r}}}))
    """)
    answers = json.loads(run_code(hers.url, hers.token, code))
    assert set(hers.gpu_indices) != set(his.gpu_indices)
    for index in his.gpu_indices:
        assert answers[str(index)] == 1  # EPERM: the devices controller
    for index in hers.gpu_indices:
        assert answers[str(index)] == 6  # ENXIO: let through, no driver behind it

    seen = run_code(hers.url, hers.token, textwrap.dedent("""
        import os
        st = os.stat("/dev/nvidia97")
        print(os.major(st.st_rdev), os.minor(st.st_rdev))
    """)).split()
    assert seen == ["1", "3"]  # /dev/null's numbers, not the GPU's 195:97

    run_code(his.url, his.token,
             "open('/tmp/bobs-secret', 'w').write('s3cret'); "
             "open('/dev/shm/bobs-shm', 'w').write('s3cret')")
    seen = run_code(hers.url, hers.token, textwrap.dedent("""
        import os
        print(sorted(os.listdir('/tmp')), sorted(os.listdir('/dev/shm')))
    """))
    assert "bobs-secret" not in seen and "bobs-shm" not in seen
    assert not Path("/tmp/bobs-secret").exists()
    # His own files are there for him.
    assert "bobs-secret" in run_code(his.url, his.token, "import os; print(os.listdir('/tmp'))")
