"""`edgekit bench --remote`: through the real OpenSSH client to a real sshd on loopback,
started by the test (skipped where no sshd is installed), and one line for a host that
cannot be reached."""

import getpass
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli
from test_bundle import BLOCKER

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None)
needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="needs the OpenSSH client (ssh, ssh-keygen)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1:<free port> that lets this user in with a fresh key."""
    if SSHD is None:
        pytest.skip("no sshd here (apt-get install openssh-server); the loopback test needs one")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs the OpenSSH client")
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    shutil.copyfile(folder / "client_key.pub", folder / "authorized_keys")
    (folder / "authorized_keys").chmod(stat.S_IRUSR | stat.S_IWUSR)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
    )
    with open(folder / "sshd.log", "w") as log:  # the child keeps its own copy of the file
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.skip(f"sshd did not start: {(folder / 'sshd.log').read_text().strip()[-300:]}")
            time.sleep(0.1)
    yield {"port": port, "key": folder / "client_key", "known_hosts": folder / "known_hosts", "folder": folder}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def python_without_torch(tmp_path_factory) -> Path:
    """What --remote-python runs: this Python, with torch unimportable (as on a device)."""
    folder = tmp_path_factory.mktemp("device-python")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    wrapper = folder / "python3"
    wrapper.write_text(f"#!/bin/sh\nexport PYTHONPATH={folder}\nexport EDGEKIT_TEST_BLOCK=torch\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def test_bench_remote_through_a_real_sshd(sshd, python_without_torch, tiny_artifact, tmp_path):
    from edgekit.core import BenchResult

    target = f"{getpass.getuser()}@127.0.0.1:{sshd['port']}"
    out = tmp_path / "remote.json"
    remote_dir = sshd["folder"] / "device-home"
    env = {"EDGEKIT_SSH_OPTS": f"-F /dev/null -i {sshd['key']} -o IdentitiesOnly=yes"}
    proc = run_cli(
        "bench", str(tiny_artifact.path), "--backend", "pytorch,onnxruntime", "--views", "1", "--iterations", "3", "--warmup", "1", "--power", "off",
        "--remote", target, "--remote-python", str(python_without_torch), "--remote-dir", str(remote_dir),
        "--ssh-option", f"UserKnownHostsFile={sshd['known_hosts']}", "--json", str(out), cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" in proc.stdout and f"on {target}" in proc.stdout.replace("\n", " ")
    document = json.loads(out.read_text())
    (row,) = [BenchResult.from_dict(r) for r in document["results"]]  # PyTorch ran here only for the reference
    assert row.backend == "onnxruntime" and row.environment["remote"] == target and document["machine"]["remote"] == target
    assert row.accuracy.images == 7 and row.accuracy.agreement == 100.0
    assert document["command"].startswith("edgekit bench") and "device_runner bench" in document["remote_command"]
    (bundle,) = remote_dir.iterdir()
    assert (bundle / "bundle.json").is_file() and (bundle / "results.json").is_file()
    assert sshd["known_hosts"].read_text().strip()  # the host key was accepted on first use

    # The next run keeps an intact bundle with the same id there (and its engines); a
    # damaged one is copied again.
    from edgekit.remote import RemoteHost, SshSettings, remote_bundle_id

    host = RemoteHost.parse(target)
    settings = SshSettings((f"UserKnownHostsFile={sshd['known_hosts']}",), ("-F", "/dev/null", "-i", str(sshd["key"])))
    bundle_id = json.loads((bundle / "bundle.json").read_text())["id"]
    assert remote_bundle_id(host, settings, str(bundle), str(python_without_torch)) == bundle_id
    with open(bundle / "preprocessing.json", "a") as f:
        f.write(" ")
    assert remote_bundle_id(host, settings, str(bundle), str(python_without_torch)) is None


@needs_ssh
def test_unreachable_host_is_one_line(tiny_artifact, tmp_path):
    port = free_port()  # nothing listens there
    target = f"edge@127.0.0.1:{port}"
    env = {"EDGEKIT_SSH_OPTS": "-F /dev/null"}
    proc = run_cli("bench", str(tiny_artifact.path), "--backend", "onnxruntime", "--remote", target, "--ssh-option", f"UserKnownHostsFile={tmp_path / 'kh'}", cwd=tmp_path, env=env)
    line = assert_one_line_error(proc, f"cannot reach {target}", "Connection refused")
    assert "ssh" in line


@needs_ssh
def test_a_recipe_with_an_unreachable_remote_fails_before_any_work(tmp_path):
    port = free_port()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'models = ["mobilenet_v3_small"]\nvariants = ["fp32"]\nbackends = ["onnxruntime"]\nbatch = [1]\n[export]\nrandom_init = true\ninput_size = 64\n'
        f'[bench]\nremote = "edge@127.0.0.1:{port}"\nssh_options = ["ConnectTimeout=5"]\n'
    )
    proc = run_cli("run", str(recipe), cwd=tmp_path, env={"EDGEKIT_SSH_OPTS": f"-F /dev/null -o UserKnownHostsFile={tmp_path / 'kh'}"})
    assert_one_line_error(proc, f"cannot reach edge@127.0.0.1:{port}", "Connection refused")
    assert not (tmp_path / "exported").exists()


def test_bad_remote_targets_and_ssh_arguments(tiny_artifact, tmp_path):
    from edgekit.core import UsageError
    from edgekit.remote import RemoteHost, SshSettings, ssh_command

    assert RemoteHost.parse("nvidia@jetson.local:2222") == RemoteHost("jetson.local", "nvidia", 2222)
    assert RemoteHost.parse("jetson") == RemoteHost("jetson")
    assert str(RemoteHost.parse("me@[fe80::1]:22")) == "me@[fe80::1]:22"
    for bad in ("me@host:99999", "me@", "me@host:port", "a b"):
        with pytest.raises(UsageError, match="user@host"):
            RemoteHost.parse(bad)
    args = ssh_command(RemoteHost("h", "u", 2200), SshSettings(("StrictHostKeyChecking=no",), ("-i", "key")), "true")
    # ssh keeps the first value of an option: edgekit's security options come first; the
    # host-key policy the user names on the command line replaces edgekit's (a recipe cannot name it)
    assert "StrictHostKeyChecking=no" in args and "StrictHostKeyChecking=accept-new" not in args and args[args.index("-i") + 1] == "key"
    assert args[1:3] == ["-o", "BatchMode=yes"] and args[-4:] == ["2200", "--", "u@h", "true"]
    proc = run_cli("bench", str(tiny_artifact.path), "--remote", "me@host:99999", cwd=tmp_path)
    assert_one_line_error(proc, "--remote", code=2)
