"""The browser shell's argument filter (access/terminal.py), from the attacker's side: every
spelling of a flag that would change kubectl's server, credentials, identity or kubeconfig
is refused, and no file argument leaves the session's folder, whether by an absolute path,
`..`, a symbolic link, a list or a URL. Pure: no database, no process."""

import os
import re
import shutil
import subprocess

import pytest

from access.terminal import (
    FILE_FLAGS,
    REFUSED_COMMANDS,
    REFUSED_FLAGS,
    SHORT_EITHER,
    SHORT_VALUE,
    Refused,
    check_command,
    split_line,
)


@pytest.fixture
def scratch(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "app.yaml").write_text("kind: ConfigMap\n")
    (folder / "manifests").mkdir()
    (folder / "manifests" / "one.yaml").write_text("kind: ConfigMap\n")
    (tmp_path / "outside.yaml").write_text("secret: yes\n")
    return folder


def check(line: str, scratch) -> list[str]:
    """What the shell does with a typed line: split it as a shell would quote it, check it."""
    return check_command(split_line(line), scratch=str(scratch))


def refused(line: str, scratch) -> str:
    with pytest.raises(Refused) as exc:
        check(line, scratch)
    return str(exc.value)


# --- flags that change where kubectl goes, as whom, with what --------------------------------

IDENTITY_FLAGS = sorted(REFUSED_FLAGS)


@pytest.mark.parametrize("flag", IDENTITY_FLAGS)
def test_every_refused_flag_is_refused_in_every_spelling(flag, scratch):
    for line in (
        f"kubectl get pods --{flag}=https://example.com",
        f"kubectl get pods --{flag} https://example.com",
        f"kubectl get --{flag}=x pods",
        f"kubectl get pods --{flag.replace('-', '_')}=x",  # kubectl reads _ as -
        f"kubectl --{flag}=x get pods",  # before the command
        f"kubectl get pods -n demo --{flag}",
    ):
        assert f"--{flag} is refused" in refused(line, scratch), line


@pytest.mark.parametrize("line", [
    "kubectl get pods -s https://example.com",
    "kubectl get pods -shttps://example.com",
    "kubectl get pods -s=https://example.com",
    "kubectl -s https://example.com get pods",
    "kubectl exec -its https://example.com pod -- sh",  # -i -t -s in one cluster
    "kubectl get pods -As x",
    "kubectl get pods -server",  # one dash: -s with the value "erver"
    "kubectl logs -fs https://example.com mypod",  # logs: -f is --follow, then -s
    "kubectl logs -pfs x mypod",
])
def test_the_server_shorthand_is_refused_wherever_kubectl_would_read_it(line, scratch):
    message = refused(line, scratch)
    assert "-s is --server" in message or "ambiguous" in message


@pytest.mark.parametrize("line", [
    "kubectl get pods -n s",  # -n takes a value: "s" is a namespace
    "kubectl get pods -nsystem",
    "kubectl get pods -ojsonpath={.status}",  # -o takes the rest, s included
    "kubectl get pods -lapp=server",
    "kubectl logs mypod -c sidecar",
    "kubectl exec -it pod -- kubectl --server=https://x --token=y",  # the remote command
    "kubectl run tmp --image=busybox -it --rm -- sh -c 'cat /etc/passwd; id | wc'",
    "kubectl get pods -o 'jsonpath={range .items[*]}{.metadata.name};{end}'",
    "kubectl get pods -l 'env in (prod, dev)'",
])
def test_what_only_looks_like_a_refused_flag_runs(line, scratch):
    assert check(line, scratch)


def test_the_command_must_come_first_so_kubectl_and_the_filter_agree_on_it(scratch):
    # kubectl skips a flag it cannot size together with the next word: `--x get proxy` would
    # run `proxy`. Only the global flags it skips the same way may come first.
    assert "Put the command first" in refused("kubectl --accept-hosts get proxy", scratch)
    assert check("kubectl -n demo get pods", scratch)
    assert check("kubectl --namespace=demo -v 6 get pods", scratch)


@pytest.mark.parametrize("command", sorted(REFUSED_COMMANDS))
def test_commands_that_listen_edit_or_load_plugins_are_refused(command, scratch):
    assert f"kubectl {command} is refused" in refused(f"kubectl {command} x", scratch)


def test_an_unknown_command_is_not_run_as_a_plugin(scratch):
    # kubectl would look for an executable `kubectl-foo` on the PATH and run it.
    assert "no command 'foo'" in refused("kubectl foo", scratch)


@pytest.mark.parametrize("line", [
    "kubectl config set-context x --namespace=other",
    "kubectl config use-context other",
    "kubectl config set-credentials me --token=x",
    "kubectl config delete-context x",
    "kubectl config -n view set-context x",  # kubectl would skip `view` as -n's value
])
def test_the_kubeconfig_can_be_read_but_not_changed(line, scratch):
    assert "kubeconfig is fixed" in refused(line, scratch)
    assert check("kubectl config view", scratch)
    assert check("kubectl config current-context", scratch)


def test_editors_are_refused_however_they_are_asked_for(scratch):
    assert "editors do not run" in refused("kubectl edit deploy/x", scratch)
    assert "editors do not run" in refused("kubectl create -f app.yaml --edit", scratch)
    assert "editors do not run" in refused(
        "kubectl apply --field-manager me edit-last-applied deploy/x", scratch)


def test_kustomize_is_refused_however_it_is_asked_for(scratch):
    for line in ("kubectl apply -k manifests", "kubectl apply --kustomize=manifests",
                 "kubectl kustomize manifests", "kubectl apply -Rk manifests"):
        assert "kustomize" in refused(line, scratch), line


@pytest.mark.parametrize("line", [
    "kubectl get pods | grep x", "kubectl get pods; rm -rf /", "kubectl get pods && id",
    "kubectl get pods > /etc/passwd", "kubectl apply -f - < /etc/passwd",
    "kubectl get pods 2>&1", "kubectl get pods &", "kubectl get pods|grep x",
    "kubectl get pods;id",
])
def test_shell_syntax_is_not_interpreted_and_says_so(line, scratch):
    assert "shell syntax are not interpreted" in refused(line, scratch)


# --- files: only inside the session's folder ---------------------------------------------


@pytest.mark.parametrize("line", [
    "kubectl apply -f /etc/passwd",
    "kubectl apply -f ../outside.yaml",
    "kubectl apply -f manifests/../../outside.yaml",
    "kubectl apply --filename=/etc/kubernetes/admin.conf",
    "kubectl apply -f=/etc/passwd",
    "kubectl apply -f app.yaml,/etc/passwd",  # kubectl splits the list at commas
    "kubectl apply -Rf /etc",  # -R, then -f with a joined value
    "kubectl create configmap x --from-file=/etc/passwd",
    "kubectl create configmap x --from-file=passwd=/etc/passwd",
    "kubectl create configmap x --from-file app.yaml,key=../outside.yaml",
    "kubectl create secret generic x --from-env-file=/proc/self/environ",
    "kubectl create secret tls x --cert=/etc/ssl/private/a.pem --key=app.yaml",
    "kubectl patch deploy x --patch-file /etc/passwd",
    "kubectl get pods -o jsonpath-file=/etc/passwd",
    "kubectl get pods -ogo-template-file=/etc/passwd",
    "kubectl get pods -o go-template-file --template /etc/passwd",
    "kubectl get pods --output=custom-columns-file=../outside.yaml",
    "kubectl cluster-info dump --output-directory=/tmp/dump",
    "kubectl get pods --profile=cpu --profile-output=/tmp/p.pprof",
    "kubectl debug mypod -it --image=busybox --custom=/etc/passwd",
    "kubectl cp mypod:/etc/hosts /tmp/hosts",
    "kubectl cp ../outside.yaml mypod:/tmp/x",
])
def test_file_arguments_outside_the_session_folder_are_refused(line, scratch):
    assert "outside this session's folder" in refused(line, scratch)


def test_a_symbolic_link_cannot_lead_out_of_the_folder(scratch, tmp_path):
    os.symlink("/etc/passwd", scratch / "passwd")
    os.symlink(tmp_path, scratch / "up")
    assert "outside this session's folder" in refused("kubectl apply -f passwd", scratch)
    assert "outside this session's folder" in refused("kubectl apply -f up/outside.yaml",
                                                      scratch)
    # A folder holding such a link is refused too: kubectl reads every file in it.
    os.symlink("/etc/shadow", scratch / "manifests" / "shadow.yaml")
    assert "links outside this session's folder" in refused(
        "kubectl apply -R -f manifests", scratch)


@pytest.mark.parametrize("url", ["https://example.com/x.yaml", "http://169.254.169.254/",
                                 "file:///etc/passwd"])
def test_urls_are_never_fetched_from_the_portals_machine(url, scratch):
    assert "never URLs" in refused(f"kubectl apply -f {url}", scratch)


@pytest.mark.parametrize("line", [
    "kubectl apply -f app.yaml",
    "kubectl apply -f ./app.yaml",
    "kubectl apply -f manifests/",
    "kubectl apply -f -",  # stdin: paste a manifest, then Ctrl-D
    "kubectl apply -f app.yaml,manifests/one.yaml",
    "kubectl create configmap x --from-file=conf=app.yaml",
    "kubectl cp mypod:/etc/hosts hosts",
    "kubectl get pods -o jsonpath-file=app.yaml",
    "kubectl logs -f mypod",
    "kubectl logs -f deploy/web",
])
def test_files_inside_the_session_folder_are_fine(line, scratch):
    assert check(line, scratch)


# --- the filter's knowledge of kubectl matches the kubectl installed ----------------------

KUBECTL = shutil.which("kubectl")


def kubectl_help(*command: str) -> str:
    return subprocess.run([KUBECTL, *command, "--help"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
                          timeout=30).stdout


def all_commands() -> dict[tuple[str, ...], str]:
    """Every command and subcommand of the installed kubectl, with its help text."""
    from concurrent.futures import ThreadPoolExecutor

    found: dict[tuple[str, ...], str] = {}
    level = [()]
    with ThreadPoolExecutor(8) as pool:
        while level:
            texts = list(pool.map(lambda command: kubectl_help(*command), level))
            found.update(zip(level, texts, strict=True))
            level = [(*command, name) for command, text in zip(level, texts, strict=True)
                     for name in re.findall(r"^  ([a-z][a-z0-9-]*)\s{2,}\S",
                                            text.split("Usage:")[0], re.M)
                     if name != "help" and (*command, name) not in found]
    return found


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_the_filters_short_flags_match_every_command_of_the_installed_kubectl():
    """A letter the filter reads as taking a value must take one in every command (else what
    follows it in a cluster could be a flag it never checks); a letter that takes a value
    anywhere must be known as such, ambiguous, refused, or belong to a refused command."""
    value_letters: dict[str, set[str]] = {}
    bool_letters: dict[str, set[str]] = {}
    commands = all_commands()
    assert len(commands) > 50  # the walk found the commands
    for command, text in commands.items():
        if command and command[0] in REFUSED_COMMANDS:
            continue
        for letter, name, default in re.findall(r"^\s+-(\w), --([\w-]+)=(\S*?):?$",
                                                text, re.M):
            kind = bool_letters if default.rstrip(":") in ("false", "true") else value_letters
            kind.setdefault(letter, set()).add(f"{' '.join(command)} --{name}")
    assert not set(SHORT_VALUE) & set(bool_letters), bool_letters
    unknown = set(value_letters) - set(SHORT_VALUE) - set(SHORT_EITHER) - {"s", "k"}
    assert not unknown, {letter: value_letters[letter] for letter in unknown}


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_every_global_flag_of_the_installed_kubectl_was_weighed():
    """A new global flag in a newer kubectl fails here until someone decides about it."""
    weighed = set(REFUSED_FLAGS) | FILE_FLAGS | {
        "disable-compression", "log-flush-frequency", "match-server-version", "namespace",
        "profile", "request-timeout", "v", "vmodule", "warnings-as-errors",
    }
    options = subprocess.run([KUBECTL, "options"], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}).stdout
    flags = set(re.findall(r"^\s+(?:-\w, )?--([\w-]+)=", options, re.M))
    assert flags and flags <= weighed, flags - weighed
