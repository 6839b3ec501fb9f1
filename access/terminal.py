"""What runs inside a browser terminal, as a process of its own.

Standard library only: the portal runs this file's text with `python -I -S -c <text>
<config>` as the shell's unprivileged OS user, in a pseudo-terminal whose other end is the
browser (access/shell.py). Two modes:

- ``kubectl``: a small line-editing REPL (GNU readline: arrows, history, Ctrl-R, Tab
  completion through ``kubectl __complete``) that runs only kubectl. Each line is split with
  `shlex` and never given to a shell, so `;`, `|`, `$(...)` and redirections mean nothing;
  `check_command` refuses flags that would change the server, the credentials, the identity
  or the kubeconfig, and keeps file arguments inside the session's own folder; kubectl then
  runs directly, with the clean environment this process was given.
- ``exec``: a login shell in a local sandbox: only the set-up below, then exec.

Either way it first becomes the leader of a session of its own with the terminal as its
controlling terminal (Ctrl-C reaches what runs; closing the terminal ends everything), then
sets the resource limits that everything started from here inherits.

`check_command` is what the tests attack: it must never let through what kubectl would read
as one of the refused flags, whatever the spelling (`--server=x`, `--server x`,
`--insecure_skip_tls_verify`, `-s x`, `-sx`, `-s=x`, `-it -sx` in one cluster...).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys

# --- the argument filter -----------------------------------------------------------------

WHERE = "this shell reaches the instance only through the portal"
AS_YOU = "this shell always acts as you, with the portal's session credential"
FIXED = "this shell's kubeconfig is fixed"
NO_EDITOR = ("editors do not run in the browser shell: use kubectl apply, patch, set or "
             "label instead")
NO_KUSTOMIZE = ("kustomize does not run in the browser shell (it can fetch remote bases): "
                "use a downloaded kubeconfig for that")

# Global flags (and two per-command ones) that would change where kubectl goes, with what
# credential, as whom, or which configuration it reads. Matched after kubectl's own
# normalisation (`_` reads as `-`).
REFUSED_FLAGS = {
    "server": WHERE, "insecure-skip-tls-verify": WHERE, "tls-server-name": WHERE,
    "certificate-authority": WHERE, "proxy-url": WHERE,
    "token": AS_YOU, "username": AS_YOU, "password": AS_YOU, "client-certificate": AS_YOU,
    "client-key": AS_YOU, "as": AS_YOU, "as-group": AS_YOU, "as-uid": AS_YOU,
    "as-user-extra": AS_YOU,
    "kubeconfig": FIXED, "cluster": FIXED, "context": FIXED, "user": FIXED, "kuberc": FIXED,
    "cache-dir": "kubectl keeps its cache in the session's home",
    "kustomize": NO_KUSTOMIZE, "edit": NO_EDITOR,
}

# kubectl's commands that run here, and those refused with a reason.
COMMANDS = frozenset({
    "annotate", "api-resources", "api-versions", "apply", "attach", "auth", "autoscale",
    "certificate", "cluster-info", "completion", "config", "cordon", "cp", "create", "debug",
    "delete", "describe", "diff", "drain", "events", "exec", "explain", "expose", "get",
    "help", "label", "logs", "options", "patch", "replace", "rollout", "run", "scale", "set",
    "taint", "top", "uncordon", "version", "wait",
})
REFUSED_COMMANDS = {
    "edit": NO_EDITOR,
    "kustomize": NO_KUSTOMIZE,
    "proxy": "kubectl proxy would listen on the portal's machine, not yours: use a "
             "downloaded kubeconfig for that",
    "port-forward": "port-forward would listen on the portal's machine, not yours: use a "
                    "downloaded kubeconfig for that",
    "plugin": "kubectl plugins do not run in the browser shell",
    "alpha": "alpha commands do not run in the browser shell",
}
CONFIG_READS = frozenset({"view", "current-context", "get-contexts", "get-clusters",
                          "get-users"})

# Short flags, from every command's help in kubectl 1.32 (tests/test_shell_filter.py checks
# this against the installed kubectl): these take a value in every command, so what follows
# them in a cluster (`-nfoo`) is their value and never more flags.
SHORT_VALUE = frozenset("nolLcerv")
# `-f` is --filename (a value) everywhere except `logs`, where it is --follow; `-p` is
# --previous in logs and takes a value elsewhere. What follows them could be either, so both
# readings are checked.
SHORT_EITHER = frozenset("fp")
# Long flags whose value names a local file (or folder) kubectl reads or writes. The first
# three are lists: kubectl splits them at commas.
FILE_LISTS = frozenset({"filename", "from-file", "from-env-file"})
FILE_FLAGS = FILE_LISTS | {"cert", "key", "patch-file", "output-directory", "profile-output",
                           "custom"}
# Output formats whose value (or the --template value) is a template file.
FILE_OUTPUTS = frozenset({"go-template-file", "templatefile", "jsonpath-file",
                          "custom-columns-file"})
VALUE_FLAGS = FILE_FLAGS | {"output", "template"}
SHELL_SYNTAX = frozenset({"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "<<<",
                          "2>", "2>&1", "&>", "(", ")"})
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class Refused(Exception):
    """A command line the shell will not run; the message says why, for the user."""


def _refuse_flag(shown: str, name: str) -> None:
    raise Refused(f"{shown} is refused: {REFUSED_FLAGS[name]}.")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def confine(path: str, scratch: str, *, stdin_ok: bool = False) -> None:
    """A file argument must name something inside the session's folder, after following
    `..` and symbolic links; a folder must hold no link that leads out of it."""
    if path == "-" and stdin_ok:
        return
    if URL.match(path):
        raise Refused(f"{path} is refused: the shell reads only files in this session's "
                      "folder, never URLs.")
    if '"' in path or "\n" in path or "\0" in path:
        raise Refused("Quotes and line breaks inside file names are not supported here.")
    root = os.path.realpath(scratch)
    full = os.path.realpath(os.path.join(root, path))
    if not _inside(full, root):
        raise Refused(f"{path} is outside this session's folder: the shell reads and writes "
                      "only files there.")
    if os.path.isdir(full):
        for folder, dirs, files in os.walk(full):
            for name in dirs + files:
                entry = os.path.join(folder, name)
                if os.path.islink(entry) and not _inside(os.path.realpath(entry), root):
                    raise Refused(f"{os.path.relpath(entry, root)} links outside this "
                                  "session's folder.")


def _file_values(name: str, value: str) -> list[str]:
    if name in FILE_LISTS:
        parts = value.split(",")
        if name == "from-file":  # [key=]source
            parts = [p.split("=", 1)[1] if "=" in p else p for p in parts]
        return parts
    return [value]


def _scan_cluster(chars: str, shown: str) -> list[tuple[str, str | None]]:
    """The flags a cluster of short flags (`-itn`, `-nfoo`, `-ojson`) may mean, as pflag
    reads them: (letter, value or None when the value is the next argument). Refuses `-s`
    wherever it could be read as a flag."""
    flags: list[tuple[str, str | None]] = []
    for i, letter in enumerate(chars):
        rest = chars[i + 1:]
        if letter == "s":
            raise Refused(f"{shown} is refused: -s is --server, and {WHERE}.")
        if letter == "k":
            raise Refused(f"{shown} is refused: -k is --kustomize, and {NO_KUSTOMIZE}.")
        if rest.startswith("="):  # -o=json: everything after '=' is the value
            flags.append((letter, rest[1:]))
            return flags
        if letter in SHORT_VALUE:
            flags.append((letter, rest or None))
            return flags
        if letter in SHORT_EITHER:
            if rest:
                # Read as a value (-fmy.yaml) or as more flags (logs -fs...): check both.
                try:
                    _scan_cluster(rest, shown)
                except Refused:
                    raise Refused(
                        f"{shown} is refused: joined short flags are ambiguous here; write "
                        f"the flag and its value apart (-{letter} {rest})") from None
                flags.append((letter, rest))
                return flags
            flags.append((letter, None))
            continue
        flags.append((letter, ""))  # a flag without a value (-i, -t, -A, -w, -R, -q...)
    return flags


# Global flags that may come before the command (`kubectl -n demo get pods`): kubectl skips
# them and their value to find the command, as the filter does.
LEADING_VALUE = frozenset({"-n", "--namespace", "-v", "--v", "--request-timeout"})
LEADING_BOOL = frozenset({"--match-server-version", "--warnings-as-errors"})


def _command_index(args: list[str]) -> int:
    """Where the command is, after any leading global flags kubectl skips the same way."""
    j = 0
    while j < len(args) and args[j].startswith("-"):
        word = args[j]
        if word in LEADING_VALUE:
            j += 2
        elif word in LEADING_BOOL or word.partition("=")[0] in LEADING_VALUE or (
                word[:2] in ("-n", "-v") and len(word) > 2):
            j += 1
        else:
            if word.startswith("--"):
                name = word[2:].partition("=")[0].replace("_", "-")
                if name in REFUSED_FLAGS:
                    raise Refused(f"--{name} is refused: {REFUSED_FLAGS[name]}.")
            else:
                _scan_cluster(word[1:], word)
            raise Refused("Put the command first, then its flags: kubectl get pods -n demo.")
    return j


SYNTAX = ("Pipes, redirections and other shell syntax are not interpreted here: each line "
          "runs one kubectl command (paste a manifest after kubectl apply -f -, then press "
          "Ctrl-D).")


def split_line(line: str) -> list[str]:
    """The words of a command line, as a shell would quote them; operators outside quotes
    (`;`, `|`, `&&`, `>`...) are refused rather than passed on as arguments."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    if any(token and set(token) <= set("();<>|&") for token in lexer):
        raise Refused(SYNTAX)
    return shlex.split(line)


def check_command(words: list[str], *, scratch: str) -> list[str]:
    """kubectl's arguments for a command line split into `words` (the first is `kubectl`),
    or Refused with the reason. Files are confined to `scratch`."""
    args = list(words[1:])
    for word in args:
        if word in SHELL_SYNTAX or (word[:1] in "<>" and len(word) > 1):
            raise Refused(SYNTAX)
    if not args or args[0] in ("-h", "--help"):
        return args
    start = _command_index(args)
    if start >= len(args):
        return args  # only global flags: kubectl prints its help
    command = args[start]
    if command in REFUSED_COMMANDS:
        raise Refused(f"kubectl {command} is refused: {REFUSED_COMMANDS[command]}.")
    if command not in COMMANDS:
        raise Refused(f"kubectl has no command {command!r} here. Type help for the list.")
    if command == "config":
        # Its subcommand must come next: only those that read the kubeconfig run.
        sub = args[start + 1] if start + 1 < len(args) else ""
        if sub not in CONFIG_READS and sub not in ("", "-h", "--help"):
            raise Refused(f"kubectl config {sub} is refused: {FIXED}; view it with "
                          "kubectl config view.")

    positionals: list[str] = []
    outputs: list[str] = []
    templates: list[str] = []
    files: list[tuple[str, str]] = []  # (flag, value)
    either_values: list[str] = []  # what follows a lone -f: a file, or logs' pod name
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        if word == "--":
            break  # the rest is the remote command of exec, run or debug
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            name = name.replace("_", "-")  # kubectl normalises flag names this way
            if name in REFUSED_FLAGS:
                raise Refused(f"--{name} is refused: {REFUSED_FLAGS[name]}.")
            if name in VALUE_FLAGS:
                if not eq:
                    if i >= len(args):
                        continue
                    value = args[i]
                    i += 1
                if name == "output":
                    outputs.append(value)
                elif name == "template":
                    templates.append(value)
                else:
                    files.append((name, value))
            continue
        if word.startswith("-") and len(word) > 1:
            for letter, value in _scan_cluster(word[1:], word):
                if value is None and letter in SHORT_VALUE and i < len(args):
                    value = args[i]  # `-n demo`: the next argument is the value
                    i += 1
                elif value is None and letter == "f" and i < len(args):
                    # `-f x`: a file, unless this is `logs -f` (follow) and x its pod: x is
                    # checked as a file and read on as an argument too.
                    either_values.append(args[i])
                if letter == "o" and value is not None:
                    outputs.append(value)
                elif letter == "f" and value is not None:
                    files.append(("filename", value))
            continue
        positionals.append(word)

    if command == "apply" and "edit-last-applied" in positionals:
        raise Refused(f"kubectl apply edit-last-applied is refused: {NO_EDITOR}.")
    for value in either_values:
        if not value.startswith("-") or value == "-":
            for path in _file_values("filename", value):
                confine(path, scratch, stdin_ok=True)
    for name, value in files:
        for path in _file_values(name, value):
            confine(path, scratch, stdin_ok=name == "filename")
    file_output = False
    for output in outputs:
        form, eq, path = output.partition("=")
        if form in FILE_OUTPUTS:
            file_output = True
            if eq:
                confine(path, scratch)
    if file_output:
        for template in templates:
            confine(template, scratch)
    if command == "cp":
        for path in positionals[positionals.index("cp") + 1:]:
            if ":" not in path:  # kubectl cp: no colon means a local path
                confine(path, scratch)
    return args


# --- the REPL ------------------------------------------------------------------------------

HELP = """\
Only kubectl runs here, one command a line, against {instance} as you:
  kubectl get pods                 kubectl describe pod <name>
  kubectl logs -f <pod>            kubectl exec -it <pod> -- sh
  kubectl apply -f -               then paste a manifest and press Ctrl-D
  kubectl auth can-i --list        what you may do{namespace_hint}
Tab completes, Up/Down recall earlier lines, Ctrl-R searches them, Ctrl-C stops a command.
Files: kubectl reads and writes only this session's folder (ls lists it); it is
removed when the shell closes. Nothing here runs through a shell: no pipes or redirections.
Refused: flags that change the server, credentials, identity or kubeconfig (--server,
--token, --as, --kubeconfig, --insecure-skip-tls-verify...), and proxy, port-forward,
edit, kustomize and plugins.
Also: help, ls, clear, exit.
"""


def _complete_kubectl(config: dict, words: list[str], text: str) -> list[str]:
    """Candidates from kubectl's own completion (`kubectl __complete`), minus what the
    filter refuses; files of the session's folder where kubectl asks for a file."""
    try:
        check_command(words, scratch=config["scratch"])
    except Refused:
        return []
    try:
        result = subprocess.run(
            [config["kubectl"], "__complete", *words[1:], text], capture_output=True,
            text=True, timeout=5, cwd=config["scratch"],
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    candidates, directive = [], 0
    for line in result.stdout.splitlines():
        if line.startswith(":"):
            directive = int(line[1:] or 0) if line[1:].isdigit() else 0
            break
        candidate = line.split("\t", 1)[0]
        name = candidate.lstrip("-").split("=", 1)[0].replace("_", "-")
        if candidate.startswith("-") and (name in REFUSED_FLAGS or candidate in ("-s", "-k")):
            continue
        if len(words) == 1 and candidate in REFUSED_COMMANDS:
            continue
        if candidate.startswith("__"):
            continue
        candidates.append(candidate)
    if not candidates and not directive & 4:  # ShellCompDirectiveNoFileComp
        return [c for c in _complete_files(config["scratch"], text) if c.startswith(text)]
    # Python's readline adds no space after a completed word: kubectl's words get one,
    # unless kubectl asks for none (ShellCompDirectiveNoSpace) or a value follows (`--x=`).
    space = "" if directive & 2 else " "
    return [c if c.endswith(("=", "/")) else c + space
            for c in candidates if c.startswith(text)]


def _complete_files(scratch: str, text: str) -> list[str]:
    folder, _, prefix = text.rpartition("/")
    where = os.path.join(scratch, folder)
    if not _inside(os.path.realpath(where), os.path.realpath(scratch)):
        return []
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return []
    base = f"{folder}/" if folder else ""
    return [base + n + ("/" if os.path.isdir(os.path.join(where, n)) else "")
            for n in names if n.startswith(prefix)]


def _take_terminal() -> None:
    """Lead a session of our own, with the terminal on stdin as its controlling terminal."""
    import fcntl
    import termios

    if os.getsid(0) != os.getpid():
        os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _limit(config: dict) -> None:
    import resource

    limits = config.get("limits", {})

    def cap(which: int, value: int) -> None:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # only ever lowered
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_CORE, 0)
    if limits.get("cpu_s"):
        cap(resource.RLIMIT_CPU, int(limits["cpu_s"]))
    if limits.get("memory_mb"):
        cap(resource.RLIMIT_AS, int(limits["memory_mb"]) << 20)
    if limits.get("file_mb"):
        cap(resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20)
    if limits.get("processes"):
        cap(resource.RLIMIT_NPROC, int(limits["processes"]))
    if limits.get("open_files"):
        cap(resource.RLIMIT_NOFILE, int(limits["open_files"]))


def _run(config: dict, args: list[str]) -> int:
    """kubectl in the foreground of the terminal; Ctrl-C reaches it (same process group),
    and the REPL waits on."""
    try:
        process = subprocess.Popen([config["kubectl"], *args], cwd=config["scratch"])
    except OSError as exc:
        print(f"kubectl could not start: {exc}")
        return 127
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


def _listing(scratch: str) -> str:
    entries = []
    for folder, _dirs, names in os.walk(scratch):
        for name in sorted(names):
            path = os.path.join(folder, name)
            entries.append(f"{os.path.getsize(path):>10}  {os.path.relpath(path, scratch)}")
    return "\n".join(entries) or "(no files yet: kubectl cp <pod>:<path> <name> puts one here)"


def _one_line(config: dict, line: str) -> bool:
    """Run one line; False once the user asked to leave."""
    line = line.strip()
    if not line or line.startswith("#"):
        return True
    try:
        words = split_line(line)
    except ValueError as exc:
        print(f"Cannot read that line: {exc}.")
        return True
    except Refused as exc:
        print(f"\x1b[31mRefused:\x1b[0m {exc}")
        return True
    if not words:
        return True
    first = words[0]
    if first in ("exit", "logout", "quit"):
        return False
    if first == "help":
        print(HELP.format(instance=config["instance"], namespace_hint=(
            f" in {config['namespace']}" if config.get("namespace") else "")), end="")
        return True
    if first == "clear":
        print("\x1b[H\x1b[2J", end="", flush=True)
        return True
    if first == "ls":
        print(_listing(config["scratch"]))
        return True
    if first not in ("kubectl", "k"):
        hint = f" Did you mean: kubectl {line}" if first in COMMANDS else ""
        print(f"Only kubectl commands run here.{hint}")
        return True
    try:
        args = check_command(words, scratch=config["scratch"])
    except Refused as exc:
        print(f"\x1b[31mRefused:\x1b[0m {exc}")
        return True
    _run(config, args)
    return True


def repl(config: dict) -> None:
    try:
        import readline
    except ImportError:  # a Python built without it: no editing, the rest works
        readline = None
    if readline is not None:
        readline.set_completer_delims(" \t\n")
        readline.parse_and_bind("tab: complete")
        readline.parse_and_bind("set show-all-if-ambiguous on")

        def complete(text: str, state: int) -> str | None:
            if state == 0:
                line = readline.get_line_buffer()[:readline.get_begidx()]
                try:
                    words = shlex.split(line)
                except ValueError:
                    words = []
                if not words:
                    complete.matches = [w for w in ("kubectl ",) if w.startswith(text)]
                elif words[0] in ("kubectl", "k"):
                    complete.matches = _complete_kubectl(config, words, text)
                else:
                    complete.matches = []
            return complete.matches[state] if state < len(complete.matches) else None

        complete.matches = []
        readline.set_completer(complete)
    print(config.get("banner", ""), flush=True)
    prompt = f"\001\x1b[1;36m\002{config['instance']}\001\x1b[0m\002 $ "
    while True:
        try:
            line = input(prompt)
        except KeyboardInterrupt:
            print("^C")
            continue
        except EOFError:
            print()
            return
        # A pasted block arrives as one line with line breaks in it: one command a line.
        for part in line.split("\n"):
            if not _one_line(config, part):
                return


def main(argv: list[str]) -> None:
    config = json.loads(argv[1])
    _take_terminal()
    _limit(config)
    if config["mode"] == "exec":
        os.execv(config["argv"][0], config["argv"])
    # Job control would stop the REPL with kubectl (Ctrl-Z) and leave the terminal dead:
    # ignored here, and so in kubectl too. Ctrl-C stays: it stops the running command.
    for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    repl(config)


if __name__ == "__main__":
    main(sys.argv)
