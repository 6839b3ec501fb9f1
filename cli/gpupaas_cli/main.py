"""`gpupaas`: the portal from a shell, a notebook or a CI job, through its JSON API.

    gpupaas login --url https://gpu.example.com --token gpa_…
    gpupaas sizes
    gpupaas launch train --size gpu-1 --wait
    gpupaas ls
    gpupaas quota
    gpupaas retry train --wait
    gpupaas kubeconfig train
    gpupaas shell train
    gpupaas notebook deploy train --profile datascience --open
    gpupaas service deploy train --service tensorboard --open
    gpupaas rm train --yes

Every command takes `-o json` and prints JSON on stdout (progress and errors go to stderr).
"""

import csv
import json
import os
import sys
import time
import webbrowser
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from . import __version__, client
from .client import Api, ApiProblem

EPILOG = "Exit codes: " + "; ".join(f"{code} {what}" for code, what in client.EXIT_CODES.items())
HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(help=__doc__.split("\n\n")[0], epilog=EPILOG, no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None, context_settings=HELP)
notebook_app = typer.Typer(help="Deploy, list, stop, start, retry and delete notebooks.",
                           epilog=EPILOG, no_args_is_help=True, context_settings=HELP)
app.add_typer(notebook_app, name="notebook")
service_app = typer.Typer(help="Deploy, list, open and delete catalogue services "
                          "(TensorBoard, MLflow…).", epilog=EPILOG, no_args_is_help=True,
                          context_settings=HELP)
app.add_typer(service_app, name="service")
# The completion scripts `gpupaas completion SHELL` prints call the command back; typer's
# classes answer them (the --install-completion option itself stays off).
typer.completion.completion_init()
out = Console()
err = Console(stderr=True)


class Format(StrEnum):
    table = "table"
    json = "json"


Output = Annotated[Format, typer.Option("--output", "-o", help="table (for people) or json.")]
Wait = Annotated[bool, typer.Option("--wait", help="Show progress until it is running (or "
                                    "failed, with the reason).")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most.")]
Poll = Annotated[float, typer.Option("--poll", hidden=True, help="Seconds between checks.")]


def _print_version(asked: bool) -> None:
    if asked:
        print(f"gpupaas {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
    ca_file: Annotated[str, typer.Option(
        "--ca-file", envvar="GPUPAAS_CA_FILE",
        help="A CA certificate (PEM) to check the portal's certificate with, for a portal "
             "with a private CA; `login` saves it for the other commands.")] = "",
    insecure: Annotated[bool, typer.Option(
        "--insecure", envvar="GPUPAAS_INSECURE",
        help="Do not check the portal's certificate at all (a test portal only).")] = False,
) -> None:
    """Sign in once with `gpupaas login`; every command then uses that portal and token."""
    client.TLS.update(ca_file=ca_file, insecure=insecure)


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


@app.command()
def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the shell's completion script: `source <(gpupaas completion bash)` in ~/.bashrc,
    `gpupaas completion fish > ~/.config/fish/completions/gpupaas.fish`."""
    print(typer.completion.get_completion_script(
        prog_name="gpupaas", complete_var="_GPUPAAS_COMPLETE", shell=shell.value))


def emit(data: Any, output: Format) -> None:
    if output == Format.json:
        print(json.dumps(data, indent=2, default=str))


def _up_to(sized: dict) -> str:
    """CPU and memory on the local cluster are limits its sandboxes share: "up to"."""
    return "up to " if sized.get("shared_limits") else ""


def _when(value: str | None) -> str:
    return (value or "")[:16].replace("T", " ")


# --- login -------------------------------------------------------------------------------


@app.command()
def login(
    url: Annotated[str, typer.Option(help="The portal's address, e.g. https://gpu.example.com",
                                     prompt="Portal URL")],
    token: Annotated[str | None, typer.Option(
        help="A personal access token (API tokens page). Prefer --with-token or the prompt: "
             "a token on the command line stays in the shell's history.")] = None,
    with_token: Annotated[bool, typer.Option(
        "--with-token", help="Read the token from standard input "
                             "(e.g. `gpupaas login --url … --with-token < token.txt`).")] = False,
    output: Output = Format.table,
) -> None:
    """Check a token with the portal and save it, with the URL, for the other commands
    (in the user's config folder, readable by the user alone)."""
    if with_token:
        token = sys.stdin.readline().strip()
    elif token is None:
        token = typer.prompt("Token", hide_input=True)
    me = Api(url, token or "").get("/me")
    path = client.save_config(url, token or "", client.TLS["ca_file"])
    if output == Format.json:
        emit({**me, "config": str(path)}, output)
        return
    out.print(f"Logged in to {url.rstrip('/')} as {me['username']} ({_token_words(me)}); "
              f"saved to {path}.")


def _token_words(me: dict[str, Any]) -> str:
    token = me["token"]
    if not token:
        return "a browser session"
    scope = "read-only" if token["scope"] == "read" else "read-write"
    return f"{scope} token {token['name']}, expires {_when(token['expires_at'])}"


@app.command()
def whoami(output: Output = Format.table) -> None:
    """Who the saved token acts as, on which portal, and until when."""
    api = Api.from_config()
    me = api.get("/me")
    if output == Format.json:
        return emit({**me, "url": api.url}, output)
    role = me["role"] or "no role (instances shared with you only)"
    out.print(f"{me['username']} on {api.url}: {role}; {_token_words(me)}.")


@app.command()
def logout(output: Output = Format.table) -> None:
    """Revoke the saved token on the portal and forget it here."""
    path = client.config_path()
    saved = client.load_config()
    if not path.exists():
        raise ApiProblem("Not logged in: there is no saved token to forget.",
                         client.UNAUTHENTICATED)
    revoked = ""
    try:
        Api(saved["url"], saved["token"]).delete("/me/token")
        revoked = "revoked"
    except ApiProblem as exc:  # offline, or already revoked: forget it here all the same
        revoked = f"not revoked ({exc.detail})"
    path.unlink()
    if output == Format.json:
        return emit({"url": saved["url"], "token": revoked, "config": str(path)}, output)
    out.print(f"Logged out of {saved['url']}: token {revoked}; removed {path}.")


# --- sizes, quota --------------------------------------------------------------------------


@app.command()
def sizes(output: Output = Format.table) -> None:
    """The sizes you may launch, and whether each fits your quota now."""
    api = Api.from_config()
    profiles = api.get("/profiles")
    if output == Format.json:
        return emit(profiles, output)
    quota = api.get("/quota")
    table = Table("SIZE", "NAME", "GPUS", "CPU", "MEMORY", "FITS NOW", box=None)
    for p in profiles:
        gpus = f"{p['gpus']}{' × ' + p['gpu_model'] if p['gpu_model'] else ''}"
        table.add_row(p["name"], p["display_name"], gpus, f"{_up_to(p)}{p['cpu']:g}",
                      f"{_up_to(p)}{p['memory_gib']} GiB",
                      "yes" if p["fits"] else f"no: {p['refusal']}")
    out.print(table)
    out.print(f"Quota: {quota['gpus_used']} of {quota['max_gpus']} GPUs and "
              f"{quota['instances_used']} of {quota['max_instances']} instances in use.")


# --- instances -----------------------------------------------------------------------------


def _wait(api: Api, path: str, what: str, *, timeout: float, poll: float,
          until: str = "running") -> dict[str, Any]:
    """Poll until the object is `until` or failed, printing each new status message."""
    deadline = time.monotonic() + timeout
    seen = None
    with err.status(f"{what}: waiting…") as spinner:
        while True:
            obj = api.get(path)
            line = f"{obj['status_label']}: {obj['status_message']}".rstrip(": ")
            if line != seen:
                err.print(f"  {obj['status_label'].lower():<13} {obj['status_message']}")
                seen = line
            spinner.update(f"{what}: {line}")
            # Failed, or final some other way (deleted meanwhile): no use waiting on.
            if obj["status"] in (until, "failed") or obj["final"]:
                return obj
            if time.monotonic() > deadline:
                raise ApiProblem(f"{what} is still {obj['status']} after {timeout:g} s: "
                                 f"{obj['status_message']}", client.TIMED_OUT)
            time.sleep(poll)


@app.command()
def launch(
    name: Annotated[str, typer.Argument(help="A name: lowercase letters, digits and hyphens.")],
    size: Annotated[str, typer.Option("--size", "-s", help="A size from `gpupaas sizes`.")],
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    wait: Wait = False,
    timeout: Timeout = 1800.0,
    poll: Poll = 2.0,
    output: Output = Format.table,
) -> None:
    """Launch an instance of a size."""
    api = Api.from_config()
    instance = api.post("/instances", {"name": name, "profile": size,
                                       "description": description})
    if output == Format.table:
        err.print(f"Launched {instance['name']} ({instance['size']}): {instance['page']}")
    _until(api, instance, wait=wait, timeout=timeout, poll=poll, output=output)


def _until(api: Api, instance: dict[str, Any], *, wait: bool, timeout: float,
                   poll: float, output: Format, until: str = "running",
                   done: str = "is running.") -> None:
    """Launch's, retry's, start's and stop's ending: with --wait, progress until `until`
    (then `done` after the name), else exit 7."""
    if wait:
        instance = _wait(api, f"/instances/{instance['id']}", instance["name"],
                         timeout=timeout, poll=poll, until=until)
    emit(instance, output)
    if wait and instance["status"] != until:
        what = "failed" if instance["status"] == "failed" else f"is {instance['status']}"
        err.print(f"{instance['name']} {what}: {instance['status_message']}")
        raise typer.Exit(client.FAILED)
    if output == Format.table and wait:
        out.print(f"{instance['name']} {done}")


@app.command()
def retry(
    name: Annotated[str, typer.Argument(help="NAME, or OWNER/NAME for a shared instance.")],
    wait: Wait = False,
    timeout: Timeout = 1800.0,
    poll: Poll = 2.0,
    output: Output = Format.table,
) -> None:
    """Send a failed instance back to provisioning, under its name (it must fit the quota
    again)."""
    _act_on_instance(name, "retry", "Retrying", wait=wait, timeout=timeout, poll=poll,
                     output=output)


def _act_on_instance(name: str, verb: str, doing: str, *, wait: bool, timeout: float,
                     poll: float, output: Format, **until: str) -> None:
    """Retry's, stop's and start's body: ask the portal, say what it is doing, and with
    --wait follow it to the end (`until`: what `_until` waits for)."""
    api = Api.from_config()
    instance = api.post(f"/instances/{api.instance_named(name)['id']}/{verb}")
    if output == Format.table:
        err.print(f"{doing} {instance['name']}: {instance['status_message']}")
    _until(api, instance, wait=wait, timeout=timeout, poll=poll, output=output, **until)


@app.command()
def stop(
    name: Annotated[str, typer.Argument(help="NAME, or OWNER/NAME for a shared instance.")],
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until it is stopped.")
                    ] = False,
    timeout: Timeout = 600.0,
    poll: Poll = 2.0,
    output: Output = Format.table,
) -> None:
    """Give an instance's GPUs back and keep its data; its notebooks and services stop with
    it. `gpupaas start NAME` brings it all back."""
    _act_on_instance(name, "stop", "Stopping", wait=wait, timeout=timeout, poll=poll,
                     output=output, until="stopped", done="is stopped; its GPUs are free.")


@app.command()
def start(
    name: Annotated[str, typer.Argument(help="NAME, or OWNER/NAME for a shared instance.")],
    wait: Wait = False,
    timeout: Timeout = 1800.0,
    poll: Poll = 2.0,
    output: Output = Format.table,
) -> None:
    """Start a stopped instance again, with its data and its notebooks (its GPUs must fit
    the quota again)."""
    _act_on_instance(name, "start", "Starting", wait=wait, timeout=timeout, poll=poll,
                     output=output)


@app.command()
def quota(output: Output = Format.table) -> None:
    """Your workspace's quota and what holds it now."""
    usage = Api.from_config().get("/quota")
    if output == Format.json:
        return emit(usage, output)
    for what, unit in (("gpus", "GPUs"), ("instances", "Instances")):
        used, most, left = usage[f"{what}_used"], usage[f"max_{what}"], usage[f"{what}_left"]
        over = f" (over quota by {used - most})" if used > most else ""
        out.print(f"{unit + ':':<11} {used} of {most} in use, {left} left{over}")


class UsageFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command()
def usage(
    month: Annotated[str | None, typer.Option(help="The month, as YYYY-MM (default: this "
                                              "month).")] = None,
    output: Annotated[UsageFormat, typer.Option("--output", "-o", help="table, json or csv "
                                                "(one row per instance, then the total).")
                      ] = UsageFormat.table,
) -> None:
    """Your GPU-hours in a month, by instance, counted from Running until deleted."""
    figures = Api.from_config().get("/usage", month=month)
    if output == UsageFormat.json:
        return emit(figures, Format.json)
    rows = [(i["name"], i["gpu_hours"]) for i in figures["instances"]]
    if output == UsageFormat.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["instance", "gpu_hours"])
        writer.writerows([*rows, ("total", figures["gpu_hours"])])
        return None
    if not rows:
        out.print(f"No GPU-hours in {figures['month']}.")
        return None
    table = Table("INSTANCE", "GPU-HOURS", box=None)
    for name, hours in rows:
        table.add_row(name, f"{hours:.1f}")
    out.print(table)
    out.print(f"{figures['gpu_hours']:.1f} GPU-hours in {figures['month']} "
              f"({figures['cpu_hours']:.1f} CPU-hours).")
    for budget in figures.get("budgets") or []:
        out.print(f"Budget of {budget['whose']}: {budget['used']:.1f} of "
                  f"{budget['gpu_hours']} GPU-hours this month ({budget['percent']} %)"
                  f"{'; spent' if budget['spent'] else ''}.")
    return None


@app.command("ls")
def list_instances(
    status: Annotated[str | None, typer.Option(help="Only this status (e.g. running, "
                                               "failed, deleted).")] = None,
    scope: Annotated[str, typer.Option(help="all, own or shared.")] = "all",
    output: Output = Format.table,
) -> None:
    """Your instances and those shared with you (not deleted ones, unless asked)."""
    instances = Api.from_config().all_pages("/instances", status=status, scope=scope)
    if output == Format.json:
        return emit(instances, output)
    if not instances:
        out.print("No instances. Launch one with `gpupaas launch NAME --size SIZE`.")
        return
    table = Table("NAME", "STATUS", "SIZE", "GPUS", "OWNER", "LAUNCHED", box=None)
    for i in instances:
        table.add_row(i["name"], i["status"], i["profile"], str(i["gpus"]),
                      i["owner"] + (" (shared)" if i["shared"] else ""), _when(i["created_at"]))
    out.print(table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="NAME, or OWNER/NAME for a shared instance.")],
    output: Output = Format.table,
) -> None:
    """An instance's details and its timeline."""
    api = Api.from_config()
    instance = api.get(f"/instances/{api.instance_named(name)['id']}")
    events = api.get(f"/instances/{instance['id']}/events")
    if output == Format.json:
        return emit({**instance, "events": events}, output)
    facts = Table.grid(padding=(0, 2))
    for label, value in [
        ("Name", instance["name"]), ("Status", instance["status_label"]),
        ("Message", instance["status_message"]), ("Size", instance["size"]),
        ("GPUs", str(instance["gpus"])), ("CPU", f"{_up_to(instance)}{instance['cpu']:g}"),
        ("Memory", f"{_up_to(instance)}{instance['memory_gib']} GiB"),
        ("Owner", instance["owner"]),
        ("Launched", _when(instance["created_at"])), ("Page", instance["page"]),
    ]:
        facts.add_row(label, value)
    out.print(facts)
    if events:
        out.print("\nTimeline")
        for e in events:
            out.print(f"  {_when(e['at'])}  {e['action']:<24} {e['actor'] or 'portal'}  "
                      f"{e['message']}")


@app.command()
def rm(
    name: Annotated[str, typer.Argument(help="NAME, or OWNER/NAME for a shared instance.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is deleted.")] = False,
    timeout: Timeout = 600.0,
    poll: Poll = 2.0,
    output: Output = Format.table,
) -> None:
    """Delete an instance (asks first, unless --yes). Its notebooks go with it."""
    api = Api.from_config()
    instance = api.instance_named(name)
    if not yes and not typer.confirm(f"Delete {instance['name']}? This cannot be undone.",
                                     err=True):
        err.print("Cancelled; nothing was deleted.")
        raise typer.Exit(client.ERROR)
    instance = api.delete(f"/instances/{instance['id']}")
    if wait:
        instance = _wait(api, f"/instances/{instance['id']}", instance["name"],
                         timeout=timeout, poll=poll, until="deleted")
    emit(instance, output)
    if output == Format.table:
        out.print(f"{instance['name']} is {instance['status']}"
                  f"{'' if instance['status'] == 'deleted' else ': ' + instance['status_message']}")


# --- remote access -------------------------------------------------------------------------


@app.command()
def shell(
    name: Annotated[str, typer.Argument(help="NAME, or OWNER/NAME for a shared instance.")],
) -> None:
    """A shell on an instance in this terminal, as the browser's "Open shell" gives it: a pod
    of a Kubernetes instance (kubectl and helm reach it through the portal), the sandbox of a
    local one. Every key goes to the shell (Ctrl-C too); `exit` ends it. Needs a token that
    may write."""
    from . import shell as terminal

    api = Api.from_config()
    instance = api.instance_named(name)
    config = client.load_config()
    raise typer.Exit(terminal.run(config["url"], config["token"], instance["id"],
                                  tls=api.tls))


def kubeconfig_target(explicit: Path | None) -> Path:
    """Where kubectl reads its configuration: --file, else the first file KUBECONFIG names,
    else ~/.kube/config."""
    if explicit:
        return explicit
    named = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return Path(named[0]).expanduser() if named else Path.home() / ".kube" / "config"


def merge_kubeconfig(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s cluster, user and context replace entries of the same names; everything else
    in `existing` stays. Its context becomes the current one."""
    merged = dict(existing) if existing else {"apiVersion": "v1", "kind": "Config"}
    for section in ("clusters", "users", "contexts"):
        names = {entry["name"] for entry in new.get(section, [])}
        kept = [e for e in merged.get(section) or [] if e.get("name") not in names]
        merged[section] = kept + list(new.get(section, []))
    merged["current-context"] = new["current-context"]
    return merged


@app.command()
def kubeconfig(
    name: Annotated[str, typer.Argument(help="NAME, or OWNER/NAME for a shared instance.")],
    hours: Annotated[float | None, typer.Option(help="How long its token is valid.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Write here instead of "
                                              "KUBECONFIG or ~/.kube/config.")] = None,
    stdout: Annotated[bool, typer.Option("--stdout", help="Print it, write nothing.")] = False,
    output: Output = Format.table,
) -> None:
    """Get a kubeconfig for an instance and merge it into your kubectl configuration (its
    context becomes the current one)."""
    api = Api.from_config()
    instance = api.instance_named(name)
    answer = api.post(f"/instances/{instance['id']}/kubeconfig",
                      {} if hours is None else {"hours": hours})
    if stdout:
        if output == Format.json:
            return emit(answer, output)
        print(answer["kubeconfig"], end="")
        return
    target = kubeconfig_target(file)
    existing = yaml.safe_load(target.read_text()) if target.exists() else {}
    merged = merge_kubeconfig(existing or {}, yaml.safe_load(answer["kubeconfig"]))
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(merged, f, sort_keys=False)
    target.chmod(0o600)
    if output == Format.json:
        return emit({"file": str(target), "context": answer["context"],
                     "expires_at": answer["expires_at"]}, output)
    out.print(f"Wrote context {answer['context']} to {target} (current context now); its token "
              f"expires {_when(answer['expires_at'])}.")


# --- notebooks -----------------------------------------------------------------------------


@notebook_app.command("deploy")
def notebook_deploy(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    profile: Annotated[str, typer.Option(help="minimal, datascience, spark, tensorflow…")],
    name: Annotated[str | None, typer.Option(help="Its name; default: the profile's.")] = None,
    cpu: Annotated[float | None, typer.Option(help="Default: the profile's.")] = None,
    memory_gib: Annotated[int | None, typer.Option(help="Default: the profile's.")] = None,
    gpus: Annotated[int | None, typer.Option(help="Default: the profile's.")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Wait until it runs, then open it in "
                                        "the browser (signed in).")] = False,
    wait: Wait = False,
    timeout: Timeout = 1800.0,
    poll: Poll = 2.0,
    output: Output = Format.table,
) -> None:
    """Deploy a Jupyter notebook onto a running instance."""
    api = Api.from_config()
    target = api.instance_named(instance)
    body = {"name": name or profile, "profile": profile, "cpu": cpu, "memory_gib": memory_gib,
            "gpus": gpus}
    notebook = api.post(f"/instances/{target['id']}/notebooks",
                        {k: v for k, v in body.items() if v is not None})
    if output == Format.table:
        err.print(f"Deploying {notebook['name']} on {target['name']}: {notebook['page']}")
    if wait or open_:
        notebook = _wait(api, f"/notebooks/{notebook['id']}", notebook["name"],
                         timeout=timeout, poll=poll)
    if (wait or open_) and notebook["status"] != "running":
        emit(notebook, output)
        what = "failed" if notebook["status"] == "failed" else f"is {notebook['status']}"
        err.print(f"{notebook['name']} {what}: {notebook['status_message']}")
        raise typer.Exit(client.FAILED)
    if open_:
        secret = api.post(f"/notebooks/{notebook['id']}/token")
        webbrowser.open(secret["open_url"])
        if output == Format.table:
            out.print(f"Opened {notebook['url']}")
    emit(notebook, output)
    if output == Format.table and notebook["status"] == "running" and not open_:
        out.print(f"{notebook['name']} is running at {notebook['url']}")


@notebook_app.command("ls")
def notebook_list(
    instance: Annotated[str | None, typer.Argument(help="Only this instance's.")] = None,
    output: Output = Format.table,
) -> None:
    """Your notebooks (on your instances and those shared with you)."""
    api = Api.from_config()
    params = {"instance": api.instance_named(instance)["id"]} if instance else {}
    notebooks = api.all_pages("/notebooks", **params)
    if output == Format.json:
        return emit(notebooks, output)
    table = Table("NAME", "INSTANCE", "STATUS", "PROFILE", "URL", box=None)
    for n in notebooks:
        table.add_row(n["name"], n["instance"], n["status"], n["profile"], n["url"])
    out.print(table)


@notebook_app.command("rm")
def notebook_remove(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The notebook's name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    output: Output = Format.table,
) -> None:
    """Delete a notebook."""
    _remove("notebooks", instance, name, yes=yes, output=output)


@notebook_app.command("retry")
def notebook_retry(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The notebook's name.")],
    output: Output = Format.table,
) -> None:
    """Start a failed notebook again, with its files."""
    api = Api.from_config()
    found = _named(api, "notebooks", instance, name)
    notebook = api.post(f"/notebooks/{found['id']}/retry")
    emit(notebook, output)
    if output == Format.table:
        out.print(f"{name} is {notebook['status']}: {notebook['status_message']}")


@notebook_app.command("stop")
def notebook_stop(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The notebook's name.")],
    output: Output = Format.table,
) -> None:
    """Stop a notebook's server and keep its files; `gpupaas notebook start` brings it back."""
    _act("notebooks", instance, name, "stop", output)


@notebook_app.command("start")
def notebook_start(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The notebook's name.")],
    output: Output = Format.table,
) -> None:
    """Start a stopped notebook again, with its files."""
    _act("notebooks", instance, name, "start", output)


def _act(kind: str, instance: str, name: str, verb: str, output: Format) -> None:
    """Stop or start the notebook or service (`kind`) of that name on the instance."""
    api = Api.from_config()
    row = api.post(f"/{kind}/{_named(api, kind, instance, name)['id']}/{verb}")
    emit(row, output)
    if output == Format.table:
        out.print(f"{name} is {row['status']}: {row['status_message']}")


def _named(api: Api, kind: str, instance: str, name: str) -> dict[str, Any]:
    """The notebook or service (`kind`: notebooks, services) of that name on the instance."""
    target = api.instance_named(instance)
    found = [row for row in api.all_pages(f"/{kind}", instance=target["id"])
             if row["name"] == name]
    if not found:
        raise ApiProblem(f"{target['name']} has no {kind[:-1]} named {name}.",
                         client.NOT_FOUND)
    return found[0]


# --- catalogue services ----------------------------------------------------------------------


@service_app.command("deploy")
def service_deploy(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    service: Annotated[str, typer.Option(help="From `gpupaas service catalogue`: tensorboard, "
                                         "mlflow…")],
    name: Annotated[str | None, typer.Option(help="Its name; default: the service's.")] = None,
    gpus: Annotated[int | None, typer.Option(help="Default: the service's.")] = None,
    model: Annotated[str | None, typer.Option(help="For a service that serves a model (vLLM): "
                                              "one from its list; default: the first.")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Wait until it runs, then open it in "
                                        "the browser.")] = False,
    wait: Wait = False,
    timeout: Timeout = 1800.0,
    poll: Poll = 2.0,
    output: Output = Format.table,
) -> None:
    """Deploy a catalogue service onto a running instance."""
    api = Api.from_config()
    target = api.instance_named(instance)
    body = {"name": name or service, "profile": service, "gpus": gpus, "model": model}
    deployed = api.post(f"/instances/{target['id']}/services",
                        {k: v for k, v in body.items() if v is not None})
    if output == Format.table:
        err.print(f"Deploying {deployed['name']} on {target['name']}: {deployed['page']}")
    if wait or open_:
        deployed = _wait(api, f"/services/{deployed['id']}", deployed["name"],
                         timeout=timeout, poll=poll)
        if deployed["status"] != "running":
            emit(deployed, output)
            err.print(f"{deployed['name']} failed: {deployed['status_message']}")
            raise typer.Exit(client.FAILED)
    if open_:
        webbrowser.open(deployed["open"])
    emit(deployed, output)
    if output == Format.table and deployed["status"] == "running":
        out.print(f"{deployed['name']} is running; open it with `gpupaas service open "
                  f"{target['name']} {deployed['name']}` or from {deployed['page']}")


@service_app.command("catalogue")
def service_catalogue(output: Output = Format.table) -> None:
    """The services you may deploy."""
    offered = Api.from_config().get("/service-profiles")
    if output == Format.json:
        return emit(offered, output)
    table = Table("SERVICE", "NAME", "CPU", "MEMORY", "GPUS", box=None)
    for p in offered:
        table.add_row(p["name"], p["display_name"], f"{p['cpu']:g}", f"{p['memory_gib']} GiB",
                      f"{p['gpus']} (at most {p['max_gpus']})")
    out.print(table)


@service_app.command("ls")
def service_list(
    instance: Annotated[str | None, typer.Argument(help="Only this instance's.")] = None,
    output: Output = Format.table,
) -> None:
    """Your services (on your instances and those shared with you)."""
    api = Api.from_config()
    params = {"instance": api.instance_named(instance)["id"]} if instance else {}
    rows = api.all_pages("/services", **params)
    if output == Format.json:
        return emit(rows, output)
    table = Table("NAME", "INSTANCE", "STATUS", "SERVICE", box=None)
    for s in rows:
        table.add_row(s["name"], s["instance"], s["status"], s["service"])
    out.print(table)


@service_app.command("open")
def service_open(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The service's name.")],
) -> None:
    """Open a service in the browser (signed in to the portal there)."""
    found = _named(Api.from_config(), "services", instance, name)
    webbrowser.open(found["open"])
    out.print(f"Opening {found['open']}")


@service_app.command("show")
def service_show(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The service's name.")],
    output: Output = Format.table,
) -> None:
    """A service's details: its status in the cluster's words, and how to reach it."""
    found = _named(Api.from_config(), "services", instance, name)
    if output == Format.json:
        return emit(found, output)
    facts = Table.grid(padding=(0, 2))
    for label, value in [
        ("Name", found["name"]), ("Service", found["service_name"]),
        ("Instance", found["instance"]), ("Status", found["status_label"]),
        ("Message", found["status_message"]),
        ("Resources", f"{found['cpu']:g} CPU, {found['memory_gib']} GiB, "
                      f"{found['gpus']} GPU{'s' if found['gpus'] != 1 else ''}"),
        *([("Model", found["model"])] if found["model"] else []),
        ("Reach it", f"{found['api_base']} (with a key: gpupaas service key {instance} "
                     f"{name})" if found["api_base"] else found["open"]),
        ("Page", found["page"]),
    ]:
        facts.add_row(label, value)
    out.print(facts)


@service_app.command("rm")
def service_remove(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The service's name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    output: Output = Format.table,
) -> None:
    """Delete a service."""
    _remove("services", instance, name, yes=yes, output=output)


@service_app.command("key")
def service_key(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The API service's name.")],
    label: Annotated[str, typer.Option("--name", help="What the key is for.")] = "",
    output: Output = Format.table,
) -> None:
    """Make a key of yours to an API service (vLLM), shown this once, with its base URL."""
    api = Api.from_config()
    found = _named(api, "services", instance, name)
    made = api.post(f"/services/{found['id']}/keys", {"name": label})
    if output == Format.json:
        return emit(made, output)
    err.print("Copy the key now: it is not shown again.")
    out.print(f"OPENAI_BASE_URL={made['api_base']}\nOPENAI_API_KEY={made['key']}")


@service_app.command("keys")
def service_keys(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The API service's name.")],
    output: Output = Format.table,
) -> None:
    """Your keys to an API service."""
    api = Api.from_config()
    rows = api.get(f"/services/{_named(api, 'services', instance, name)['id']}/keys")
    if output == Format.json:
        return emit(rows, output)
    table = Table("ID", "KEY", "NAME", "STATE", "LAST USED", box=None)
    for k in rows:
        table.add_row(str(k["id"]), f"{k['prefix']}…", k["name"], k["state"],
                      k["last_used_at"] or "never")
    out.print(table)


@service_app.command("key-rm")
def service_key_remove(
    instance: Annotated[str, typer.Argument(help="The instance: NAME or OWNER/NAME.")],
    name: Annotated[str, typer.Argument(help="The API service's name.")],
    key_id: Annotated[int, typer.Argument(help="The key's ID, from `gpupaas service keys`.")],
    output: Output = Format.table,
) -> None:
    """Revoke one of your keys to an API service (refused within a second)."""
    api = Api.from_config()
    found = _named(api, "services", instance, name)
    revoked = api.delete(f"/services/{found['id']}/keys/{key_id}")
    emit(revoked, output)
    if output == Format.table:
        out.print(f"Key {revoked['prefix']}… is {revoked['state']}.")


def _remove(kind: str, instance: str, name: str, *, yes: bool, output: Format) -> None:
    """Delete the notebook or service (`kind`: notebooks, services) of that name, asking
    first unless `yes`."""
    api = Api.from_config()
    found = _named(api, kind, instance, name)
    if not yes and not typer.confirm(f"Delete {kind[:-1]} {name}?", err=True):
        err.print("Cancelled; nothing was deleted.")
        raise typer.Exit(client.ERROR)
    deleted = api.delete(f"/{kind}/{found['id']}")
    emit(deleted, output)
    if output == Format.table:
        out.print(f"{name} is {deleted['status']}.")


def report(problem: ApiProblem, as_json: bool) -> None:
    if as_json:
        document = problem.document or {"detail": problem.detail, "status": problem.status}
        print(json.dumps(document, indent=2), file=sys.stderr)
        return
    err.print(f"Error: {problem.detail}", highlight=False)
    for e in problem.errors:
        if e.get("field") and e["field"] != "__all__":
            err.print(f"  {e['field']}: {e['detail']}", highlight=False)


def run() -> None:
    """The console script: problems become a message on stderr and a documented exit code."""
    try:
        app()
    except ApiProblem as problem:
        argv = sys.argv[1:]
        as_json = any(a in ("-ojson", "--output=json") for a in argv) or any(
            a in ("-o", "--output") and argv[i + 1:i + 2] == ["json"] for i, a in enumerate(argv))
        report(problem, as_json)
        sys.exit(problem.code)


if __name__ == "__main__":
    run()
