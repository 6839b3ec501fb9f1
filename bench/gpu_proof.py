"""On a machine with an NVIDIA GPU: the local backend finds it through NVML, an instance gets
it, and a notebook kernel sees exactly its CUDA_VISIBLE_DEVICES (through `nvidia-smi -L` run
from the kernel's own process). Uses a throwaway SQLite database; prints what it saw and
exits non-zero if any of it does not hold.

    python bench/gpu_proof.py
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="gpu-proof-"))
WORK.chmod(0o711)  # the workspace's OS user passes through to its sandbox
os.environ.pop("DATABASE_URL", None)
os.environ.update(DJANGO_SETTINGS_MODULE="gpupaas.settings", VAR_DIR=str(WORK / "var"),
                  LOCAL_USE_NVML="true", LOCAL_USER_PREFIX=f"gpp{os.getpid()}-")

KERNEL_CODE = """
import os, subprocess
print("CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip())
"""


def main() -> int:
    import django

    django.setup()
    import pynvml
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from clusters.backends.local import environments, tenants
    from clusters.backends.local.gpus import local_inventory
    from instances import services as instance_services
    from instances.models import ComputeProfile
    from notebooks import services
    from notebooks.models import NotebookProfile
    from portal.catalogue import seed_catalogue
    from tests.kit.kernel import run_code
    from workspaces.services import ensure_workspace

    inventory = local_inventory()
    print(f"inventory: {inventory.total} × {inventory.model}, simulated={inventory.simulated}")
    if inventory.simulated:
        print("FAIL: NVML found no GPU")
        return 1
    pynvml.nvmlInit()
    for index in range(pynvml.nvmlDeviceGetCount()):
        memory = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
        print(f"  GPU {index}: {inventory.devices[index]}, {memory.total / 2**30:.1f} GiB")
    pynvml.nvmlShutdown()

    call_command("migrate", verbosity=0)
    seed_catalogue()
    user = get_user_model().objects.create_user("proof", password="proof-password-1")
    instance = instance_services.launch_instance(
        workspace=ensure_workspace(user=user), name="proof",
        profile=ComputeProfile.objects.get(gpus=1), by=user)
    instance = instance_services.provision_instance(instance_id=instance.pk)
    print(f"instance: {instance.status}, {instance.status_message} "
          f"gpu_indices={instance.gpu_indices}")
    minimal = NotebookProfile.objects.get(name="minimal")
    environments.build_now(environments.environment(minimal.name, minimal.packages))
    notebook = services.deploy_notebook(instance=instance, name="proof", profile=minimal,
                                        by=user, gpus=1)
    deadline = time.monotonic() + 120
    while notebook.status != "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        notebook = services.advance_notebook(notebook_id=notebook.pk)
    print(f"notebook: {notebook.status}, gpu_indices={notebook.gpu_indices}")
    seen = run_code(notebook.url, notebook.token, KERNEL_CODE)
    print("kernel saw:\n" + seen)
    expected = ",".join(map(str, notebook.gpu_indices))
    ok = f"CUDA_VISIBLE_DEVICES={expected}\n" in seen and seen.count("GPU ") == len(
        notebook.gpu_indices)

    instance_services.delete_instance(instance=instance, by=user)
    instance_services.teardown_instance(instance_id=instance.pk)
    for name in tenants.portal_users():
        subprocess.run(["userdel", name], check=False)
    print("gpu proof:", "OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
