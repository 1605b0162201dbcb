"""`edgekit bench --remote user@host[:port]`: a bundle copied over OpenSSH, run there, its
results fetched back.

Everything goes through the real ``ssh`` client (so ~/.ssh/config, agents, jump hosts and
known_hosts work as the user has them), non-interactively: BatchMode, a connect timeout,
and new host keys accepted on first use. The bundle travels as a tar stream into
``tar -x`` on the device, under a temporary name renamed when complete; a device that
already holds the same bundle (same id) keeps it, with the TensorRT engines it built.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .core import Artifact, BackendUnavailableError, EdgekitError, UsageError
from .device_runner import BUNDLE_FILE, PARTIAL_EXIT
from .files import work_folder
from .options import declared


@dataclass(frozen=True)
class RemoteSettings:
    """The remote group's options: where an ssh run goes."""

    host: Optional[str] = declared("remote").field()
    ssh_options: tuple[str, ...] = declared("ssh_options").field(convert=tuple)
    python: str = declared("remote_python").field()
    folder: str = declared("remote_dir").field()


SSH_OPTS_ENV = "EDGEKIT_SSH_OPTS"  # extra ssh arguments, e.g. "-i ~/.ssh/jetson -J bastion"
DEFAULT_REMOTE_DIR = "edgekit-bundles"  # relative: under the remote user's home
CONNECT_TIMEOUT_S = 10
REMOTE_RESULTS = "results.json"
# User and host names: letters, digits, '.', '_' and '-', never first a '-' (ssh would read
# it as an option) and never a shell metacharacter (a user's ~/.ssh/config may put %r and %h
# into a ProxyCommand or Match exec, which a shell runs). IPv6 addresses go in brackets.
_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_TARGET = re.compile(rf"^(?:(?P<user>{_NAME})@)?(?P<host>\[[0-9A-Fa-f:.]+\]|{_NAME})(?::(?P<port>\d{{1,5}}))?$")

# --------------------------------------------------------------------------- what a recipe may ask of ssh

# The ssh_config keywords a recipe's `[bench] ssh_options` may set: each only tunes how ssh
# authenticates, verifies or keeps up the one connection the recipe already names. Nothing
# here runs or loads local code (ProxyCommand, LocalCommand, KnownHostsCommand, Match exec
# through Include, PKCS11Provider, SecurityKeyProvider, ssh-keysign through
# HostbasedAuthentication...), opens other connections or sockets (ProxyJump, *Forward,
# Control*, IdentityAgent, Tunnel), or sends local data away (SendEnv, SetEnv, ForwardAgent,
# GSSAPIDelegateCredentials), or weakens how the host is verified: HostKeyAlias (the name a
# new host key is trusted under), StrictHostKeyChecking and UserKnownHostsFile (no check, or
# an empty known_hosts: any server's key accepted), HostKeyAlgorithms (a key type that
# known_hosts has none of counts as a new host, accepted on first use). Anything else stays
# possible, typed by the user: `edgekit bench --ssh-option` or the EDGEKIT_SSH_OPTS
# environment variable.
RECIPE_SSH_OPTIONS = (
    "AddressFamily", "BatchMode", "CASignatureAlgorithms", "CertificateFile", "CheckHostIP", "Ciphers", "Compression",
    "ConnectTimeout", "ConnectionAttempts", "GSSAPIAuthentication", "IPQoS", "IdentitiesOnly",
    "IdentityFile", "KbdInteractiveAuthentication", "KexAlgorithms", "LogLevel", "MACs", "NumberOfPasswordPrompts",
    "PasswordAuthentication", "Port", "PreferredAuthentications", "PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes",
    "PubkeyAuthentication", "RekeyLimit", "ServerAliveCountMax", "ServerAliveInterval",
    "TCPKeepAlive", "UpdateHostKeys", "User",
)
# edgekit's own options that keep a connection safe, first in every ssh command line (ssh
# keeps the first value it is given): never prompt, and check the host's key (a new host's
# key is learnt, a changed one refused). A recipe can set neither (BatchMode=no from a recipe
# is overridden); the host-key policy is the user's to change, on the command line only
# (--ssh-option StrictHostKeyChecking=..., or -o in EDGEKIT_SSH_OPTS), which then replaces
# edgekit's.
SECURITY_SSH_OPTIONS = (("BatchMode", "yes"), ("StrictHostKeyChecking", "accept-new"))
_USER_MAY_REPLACE = frozenset({"stricthostkeychecking"})
_RECIPE_SSH_OPTIONS = {name.lower(): name for name in RECIPE_SSH_OPTIONS}
# Why some well-known keywords are refused (the allow-list above decides; this only explains).
_REFUSED_BECAUSE = {
    "proxycommand": "it runs a local command",
    "localcommand": "it runs a local command",
    "permitlocalcommand": "it lets LocalCommand run a local command",
    "knownhostscommand": "it runs a local command",
    "remotecommand": "it replaces the command edgekit runs",
    "proxyjump": "it connects through other hosts (running ssh again)",
    "proxyusefdpass": "it goes with ProxyCommand, which runs a local command",
    "include": "it reads other config files, whose Match exec can run local commands",
    "match": "Match exec runs local commands",
    "host": "it starts a config block",
    "pkcs11provider": "it loads a local library",
    "securitykeyprovider": "it loads a local library",
    "enablesshkeysign": "it runs the local ssh-keysign helper",
    "hostbasedauthentication": "it runs the local ssh-keysign helper",
    "controlmaster": "it shares connections through a local socket",
    "controlpath": "it shares connections through a local socket",
    "controlpersist": "it leaves a background ssh running",
    "identityagent": "it connects to a local socket",
    "localforward": "it opens a forwarded port",
    "remoteforward": "it opens a forwarded port",
    "dynamicforward": "it opens a local SOCKS proxy",
    "gatewayports": "it exposes forwarded ports",
    "permitremoteopen": "it goes with forwarded ports",
    "tunnel": "it opens a network tunnel",
    "tunneldevice": "it opens a network tunnel",
    "forwardagent": "it lends the remote host your ssh agent",
    "forwardx11": "it lends the remote host your X display",
    "forwardx11trusted": "it lends the remote host your X display",
    "gssapidelegatecredentials": "it lends the remote host your Kerberos credentials",
    "sendenv": "it sends local environment variables away",
    "setenv": "it sends values to the remote environment",
    "hostname": "it connects to a host other than the recipe's 'remote'",
    "hostkeyalias": "it chooses which host name a new host key is trusted under",
    "stricthostkeychecking": "it decides whether the host's key is checked; only you may change that",
    "userknownhostsfile": "it chooses the known_hosts file the host's key is checked against; only you may change that",
    "globalknownhostsfile": "it chooses the known_hosts file the host's key is checked against; only you may change that",
    "hostkeyalgorithms": "a key type your known_hosts lacks would make a known host look new, its key accepted unchecked",
    "hashknownhosts": "it changes how host keys are written to known_hosts",
    "xauthlocation": "it names a local program to run",
}
_SSH_WHITESPACE = " \t\r\n"
# The keyword as ssh's readconf.c reads it: after leading whitespace, up to whitespace or '='
# (or between double quotes). Anything less plain (a quote inside the word, a leading '=')
# is refused, rather than second-guessed.
_SSH_KEYWORD = re.compile(r'[ \t\r\n]*(?:"(?P<quoted>[^"]*)"|(?P<plain>[^ \t\r\n"=]+))(?=[ \t\r\n=]|$)')
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def ssh_option_name(option: str) -> Optional[str]:
    """The keyword of an ssh ``-o`` value as ssh reads it (``Key=Value``, ``Key Value``,
    ``"Key" Value``, with leading whitespace), in its original case; None when there is no
    plain keyword to read."""
    match = _SSH_KEYWORD.match(option)
    return None if match is None else (match["quoted"] if match["quoted"] is not None else match["plain"])


def _ssh_option_value(option: str) -> str:
    """What follows the keyword, skipped as readconf.c's strdelim skips it: whitespace, and one
    '=' after an unquoted keyword."""
    match = _SSH_KEYWORD.match(option)
    assert match is not None
    rest = option[match.end():]
    if match["quoted"] is None and rest:
        separator, rest = rest[0], rest[1:].lstrip(_SSH_WHITESPACE)
        if separator != "=" and rest.startswith("="):
            rest = rest[1:]
    return rest.strip(_SSH_WHITESPACE)


def recipe_safe_ssh_option(option: str) -> Optional[str]:
    """Why ``option`` (an ssh ``-o`` value) may not come from a recipe, or None when it may.

    Only keywords in RECIPE_SSH_OPTIONS pass (compared case-insensitively, as ssh does), with
    a value on one line, without ``$`` (ssh expands ``${VAR}`` from the local environment in
    some values) and, for User, a plain user name."""
    if not isinstance(option, str) or not option.strip(_SSH_WHITESPACE):
        return "it is empty"
    if _CONTROL.search(option):
        return "it holds a line break or another control character"
    name = ssh_option_name(option)
    if not name:
        return "its option name cannot be read (expected Name=value or Name value)"
    allowed = _RECIPE_SSH_OPTIONS.get(name.lower()) if re.fullmatch(r"[A-Za-z0-9]+", name) else None
    if allowed is None:
        because = _REFUSED_BECAUSE.get(name.lower())
        return f"{name!r} is not an ssh option a recipe may set" + (f" ({because})" if because else "")
    value = _ssh_option_value(option)
    if not value:
        return f"{allowed} has no value"
    if "$" in option:
        return f"{allowed}: '$' is not allowed in a recipe (ssh would expand ${{VAR}} from this machine's environment)"
    if allowed == "User" and not re.fullmatch(_NAME, value):
        return f"User must be a plain user name (letters, digits, '.', '_', '-'), got {value!r}"
    return None


def _remote_value_problem(value: str, leading_dash: str) -> Optional[str]:
    if not value or not value.strip():
        return "it is empty"
    if _CONTROL.search(value):
        return "it holds a line break or another control character"
    if value.startswith("-"):
        return leading_dash
    return None


def remote_python_problem(python: str) -> Optional[str]:
    """Why ``python`` cannot be the remote Python's path or command name, or None."""
    return _remote_value_problem(python, "it begins with '-'")


def remote_dir_problem(remote_dir: str) -> Optional[str]:
    """Why ``remote_dir`` cannot be the remote folder for bundles, or None."""
    return _remote_value_problem(remote_dir, "it begins with '-' (write ./-name for such a folder)")


@dataclass(frozen=True)
class RemoteHost:
    host: str
    user: Optional[str] = None
    port: Optional[int] = None

    @classmethod
    def parse(cls, text: str) -> "RemoteHost":
        match = _TARGET.match(text.strip()) if isinstance(text, str) else None
        if not match or (match["port"] and not 0 < int(match["port"]) < 65536):
            raise UsageError(
                f"--remote: expected user@host or user@host:port (names of letters, digits, '.', '_' and '-', "
                f"not beginning with '-'), got {text!r}"
            )
        return cls(host=match["host"].strip("[]"), user=match["user"], port=int(match["port"]) if match["port"] else None)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")


@dataclass(frozen=True)
class SshSettings:
    options: tuple[str, ...] = ()  # `-o` values, e.g. IdentityFile=~/.ssh/jetson
    extra_args: tuple[str, ...] = ()  # from EDGEKIT_SSH_OPTS
    connect_timeout: int = CONNECT_TIMEOUT_S

    @classmethod
    def from_environment(cls, options: Sequence[str] = ()) -> "SshSettings":
        for option in options:
            if not option or "\x00" in option or "\n" in option or "\r" in option:
                raise UsageError(f"--ssh-option: expected one Name=value option on one line, got {option!r}")
        try:
            extra = shlex.split(os.environ.get(SSH_OPTS_ENV, ""))
        except ValueError as e:  # an unclosed quote
            raise UsageError(f"{SSH_OPTS_ENV}: cannot split into arguments ({e})") from None
        if any("\x00" in arg for arg in extra):
            raise UsageError(f"{SSH_OPTS_ENV}: holds a NUL character")
        return cls(options=tuple(options), extra_args=tuple(extra))


@dataclass(frozen=True)
class RemoteRequest:
    """Where and how a bench runs remotely: --remote, --ssh-option, --remote-python, --remote-dir."""

    host: RemoteHost
    settings: SshSettings = SshSettings()
    python: str = "python3"
    remote_dir: str = DEFAULT_REMOTE_DIR

    @classmethod
    def parse(cls, target: str, ssh_options: Sequence[str] = (), python: Optional[str] = None, remote_dir: Optional[str] = None) -> "RemoteRequest":
        host = RemoteHost.parse(target)
        python, remote_dir = python or "python3", remote_dir or DEFAULT_REMOTE_DIR
        for flag, value, problem in (("--remote-python", python, remote_python_problem(python)), ("--remote-dir", remote_dir, remote_dir_problem(remote_dir))):
            if problem:
                raise UsageError(f"{flag}: {problem}, got {value!r}")
        return cls(host, SshSettings.from_environment(ssh_options), python, remote_dir)


def _named_options(settings: SshSettings) -> set[str]:
    """The option names (lower case) that ``settings`` gives ssh with -o."""
    names = [ssh_option_name(o) for o in settings.options]
    extra = list(settings.extra_args)
    for i, arg in enumerate(extra):
        if arg == "-o" and i + 1 < len(extra):
            names.append(ssh_option_name(extra[i + 1]))
        elif arg.startswith("-o") and len(arg) > 2:
            names.append(ssh_option_name(arg[2:]))
    return {n.lower() for n in names if n}


def ssh_command(host: RemoteHost, settings: SshSettings, remote_command: str) -> list[str]:
    """ssh takes the first value it is given for an option: edgekit's security options come
    first (SECURITY_SSH_OPTIONS; the host-key policy only where the user did not name one),
    then EDGEKIT_SSH_OPTS (the user's), then the -o options (--ssh-option, or a recipe's
    allow-listed ones), then edgekit's defaults for the rest."""
    args = ["ssh"]
    named = _named_options(settings)
    for name, value in SECURITY_SSH_OPTIONS:
        if name.lower() not in (named & _USER_MAY_REPLACE):
            args += ["-o", f"{name}={value}"]
    args += list(settings.extra_args)
    for option in settings.options:
        args += ["-o", option]
    args += [
        "-o", f"ConnectTimeout={settings.connect_timeout}",
        "-o", "ServerAliveInterval=15",
    ]
    if host.port:
        args += ["-p", str(host.port)]
    return args + ["--", host.destination, remote_command]


def _require_ssh() -> None:
    if shutil.which("ssh") is None:
        raise BackendUnavailableError("--remote needs the OpenSSH client (ssh); install it, e.g. apt-get install openssh-client")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _ssh_failure(host: RemoteHost, returncode: int, stderr: str, doing: str) -> EdgekitError:
    message = _last_line(stderr)
    if returncode == 255:  # ssh's own failure: connection, authentication, host key
        return EdgekitError(f"cannot reach {host}: {message or 'ssh exited with code 255'}")
    return EdgekitError(f"{host}: {doing} failed (exit {returncode}){': ' + message if message else ''}")


def _ssh(host: RemoteHost, settings: SshSettings, command: str, doing: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(ssh_command(host, settings, command), check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"{host}: {doing} did not finish within {timeout:.0f} s") from None


def _run(host: RemoteHost, settings: SshSettings, command: str, doing: str, timeout: float = 120) -> str:
    proc = _ssh(host, settings, command, doing, timeout)
    if proc.returncode != 0:
        raise _ssh_failure(host, proc.returncode, proc.stderr, doing)
    return proc.stdout


def remote_path(path: str) -> str:
    """Quoted for the remote shell, keeping a leading ~/ (the remote home) unquoted."""
    return "~/" + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


def _argument_path(path: str) -> str:
    """A remote path quoted as a command's argument: ./-x, not -x, which cd, mkdir, rm, mv
    and tar would take for options."""
    return shlex.quote("./" + path if path.startswith("-") else path)


def check_connection(host: RemoteHost, settings: SshSettings, python: str = "python3") -> str:
    """Fail fast, before any bundling, when the device cannot be reached or lacks ``python``;
    returns its Python version."""
    _require_ssh()
    proc = _ssh(host, settings, f"{remote_path(python)} -c 'import platform; print(platform.python_version())'", "starting Python", CONNECT_TIMEOUT_S + 50)
    if proc.returncode == 127:
        raise EdgekitError(f"{host}: no {python} there ({_last_line(proc.stderr)}); pass --remote-python PATH")
    if proc.returncode != 0:
        raise _ssh_failure(host, proc.returncode, proc.stderr, f"starting {python}")
    return proc.stdout.strip()


def remote_bundle_id(host: RemoteHost, settings: SshSettings, folder: str, python: str) -> Optional[str]:
    """The id of an intact bundle already at ``folder`` on the device, or None."""
    q = _argument_path
    check = f"cd {q(folder)} 2>/dev/null && {remote_path(python)} -m edgekit.device_runner verify >/dev/null 2>&1 && cat {BUNDLE_FILE} || true"
    text = _run(host, settings, check, "reading the bundle there", timeout=300)
    try:
        return json.loads(text).get("id") if text.strip() else None
    except (json.JSONDecodeError, AttributeError):
        return None


def upload(bundle_dir: Path, host: RemoteHost, settings: SshSettings, folder: str) -> None:
    """Stream ``bundle_dir`` into ``folder`` on the device (unpacked aside, then renamed)."""
    q = _argument_path
    staging = f"{folder}.tmp"
    command = (
        f"mkdir -p {q(posixpath.dirname(folder) or '.')} && rm -rf {q(staging)} && mkdir {q(staging)} && "
        f"tar -xf - -C {q(staging)} && rm -rf {q(folder)} && mv {q(staging)} {q(folder)}"
    )
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(ssh_command(host, settings, command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr)
        assert proc.stdin is not None
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
                for path in sorted(bundle_dir.iterdir()):
                    tar.add(path, arcname=path.name)
            proc.stdin.close()
        except BrokenPipeError:  # ssh gave up (cannot connect): its message says why
            pass
        returncode = proc.wait()
        stderr.seek(0)
        message = stderr.read().decode(errors="replace")
    if returncode != 0:
        raise _ssh_failure(host, returncode, message, "copying the bundle")


def run_remote(
    bundle_dir: Path,
    bundle_id: str,
    host: RemoteHost,
    settings: SshSettings,
    runner_args: Sequence[str],
    remote_dir: str = DEFAULT_REMOTE_DIR,
    python: str = "python3",
    progress: Callable[[str], None] = lambda line: None,
) -> dict:
    """Copy the bundle (unless the device has it), run its runner, return the results document."""
    if remote_dir == "~" or remote_dir.startswith("~/"):  # quoted below, so home-relative instead
        remote_dir = remote_dir[2:] or "."
    folder = posixpath.join(remote_dir, bundle_dir.name)
    if remote_bundle_id(host, settings, folder, python) == bundle_id:
        progress(f"{host} already holds bundle {bundle_id}")
    else:
        progress(f"copying the bundle to {host}:{folder}")
        upload(bundle_dir, host, settings, folder)
    q = shlex.quote
    command = f"cd {_argument_path(folder)} && {remote_path(python)} -m edgekit.device_runner bench {' '.join(q(a) for a in runner_args)} --json {REMOTE_RESULTS}"
    progress(f"running on {host}: {python} -m edgekit.device_runner bench")
    proc = subprocess.Popen(ssh_command(host, settings, command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    error, tail = None, ""
    for line in proc.stderr:
        line = line.rstrip("\n")
        if line.startswith("error: "):
            error = line[len("error: "):]
        elif line.strip():
            tail = line
            progress(f"{host}: {line.strip()}")
    returncode = proc.wait()
    if returncode == 127 and error is None:
        raise EdgekitError(f"{host}: {python} not found there ({tail}); pass --remote-python PATH")
    if returncode not in (0, PARTIAL_EXIT):  # PARTIAL_EXIT: some backends failed, their rows say why
        if error is not None:
            raise EdgekitError(f"{host}: {error}")
        raise _ssh_failure(host, returncode, tail, "the runner")
    text = _run(host, settings, f"cat {_argument_path(folder + '/' + REMOTE_RESULTS)}", "fetching the results", timeout=120)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise EdgekitError(f"{host}: the results file is not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits, nesting too deep
        raise EdgekitError(f"{host}: the results file is not valid JSON ({(str(e).splitlines() or [type(e).__name__])[0][:100]})") from None
    return _checked_results(document, host)


def _checked_results(document: object, host: RemoteHost) -> dict:
    """A device's results document, validated like any results file before a field is read
    (a broken or hostile runner's file is one error naming the host, never a traceback)."""
    from .core import DataError
    from .results.document import validate_results_document

    try:
        validate_results_document(document, f"{host}: results")
    except DataError as e:  # the run failed there: exit 1, like a runner that crashed
        raise EdgekitError(str(e)) from None
    assert isinstance(document, dict)
    if not isinstance(document.get("images"), dict):
        raise EdgekitError(f"{host}: results: images must be an object (the images the device ran), got {type(document.get('images')).__name__}")
    return document


def bench_remote(
    artifact: Artifact,
    backends: Sequence[str],
    images,
    remote: RemoteRequest,
    device: str,
    batch_sizes: Sequence[int],
    runner_args: Sequence[str],
    progress: Callable[[str, Optional[int], Optional[int]], None] = lambda stage, done, total: None,
) -> dict:
    """Bundle ``artifact`` for ``backends`` with ``images`` (PyTorch runs here for the
    reference logits), run it on the remote host with ``runner_args`` (edgekit.options
    generates them), return its results document with every row and the machine marked
    with the host."""
    from .bundle import bundle_name, make_bundle

    from .backends.base import BASELINE_BACKEND, deployable_backends

    deployed = tuple(b for b in backends if b != BASELINE_BACKEND)
    if not deployed:
        raise UsageError(f"--remote runs deployment backends ({', '.join(deployable_backends())}); add one with --backend")
    with work_folder("remote") as tmp:
        folder = make_bundle(
            artifact, deployed, images, Path(tmp) / bundle_name(artifact, deployed),
            device=device, batch_sizes=tuple(batch_sizes), progress=lambda stage, done, total: progress(f"bundle: {stage}", done, total),
        )
        bundle_id = json.loads((folder / BUNDLE_FILE).read_text())["id"]
        document = run_remote(
            folder, bundle_id, remote.host, remote.settings, [*runner_args, *(a for b in deployed for a in ("--backend", b))],
            remote.remote_dir, remote.python, progress=lambda line: progress(line, None, None),
        )
    host = str(remote.host)
    document["results"] = [{**r, "environment": {**r.get("environment", {}), "remote": host}} for r in document["results"]]
    document["machine"] = {**document.get("machine", {}), "remote": host}
    document["remote_command"] = document.get("command")
    return document
