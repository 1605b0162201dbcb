"""A recipe is a file people share and CI runs: loading or running one must not run commands
on this machine. ssh options from a recipe are allow-listed, remote names cannot pose as ssh
options, and the schema refuses bools for integers, nan/inf for numbers, out-of-range values
and files that are not UTF-8 text, each as one line naming file, line and key."""

import math
import shutil
import subprocess

import pytest

from conftest import assert_one_line_error, run_cli
from edgekit.core import UsageError
from edgekit.options import recipe_options
from edgekit.recipe import RecipeError, load_recipe
from edgekit.remote import RECIPE_SSH_OPTIONS, RemoteHost, SshSettings, recipe_safe_ssh_option, ssh_command, ssh_option_name

HEAD = """\
models = ["mobilenet_v3_small"]
variants = ["fp32"]
backends = ["onnxruntime"]
batch = [1]

[export]
random_init = true
input_size = 64
"""


def _write(tmp_path, text, name="recipe.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _line(text, fragment):
    return next(number for number, line in enumerate(text.splitlines(), 1) if fragment in line)


def _bench(options):
    """A recipe whose [bench] ssh_options holds ``options`` (TOML basic strings, as written)."""
    listed = ", ".join(options)
    return HEAD + f'\n[bench]\niterations = 3\nremote = "user@127.0.0.1:1"\nssh_options = [{listed}]\n'


# --------------------------------------------------------------------------- ssh options


@pytest.mark.parametrize(
    "options, keyword",
    [
        (["\"ProxyCommand=sh -c 'touch {marker}'\""], "ProxyCommand"),
        (["\"proxycommand sh -c 'touch {marker}'\""], "proxycommand"),
        (["\"  PROXYCOMMAND = sh -c 'touch {marker}'\""], "PROXYCOMMAND"),
        (["'\"ProxyCommand\" sh -c touch'"], "ProxyCommand"),
        (['"PermitLocalCommand=yes"', "\"LocalCommand=touch {marker}\""], "PermitLocalCommand"),
        (['"IdentitiesOnly=yes"', "\"LocalCommand touch {marker}\""], "LocalCommand"),
        (['"ProxyJump=evil@bastion.example"'], "ProxyJump"),
        (["\"KnownHostsCommand=/bin/sh -c 'touch {marker}'\""], "KnownHostsCommand"),
        (['"Include /tmp/evil_ssh_config"'], "Include"),
        (['"PKCS11Provider=/tmp/evil.so"'], "PKCS11Provider"),
        (['"SecurityKeyProvider=/tmp/evil.so"'], "SecurityKeyProvider"),
        (['"ControlMaster=auto"'], "ControlMaster"),
        (['"ControlPath=/tmp/cm-%C"'], "ControlPath"),
        (['"LocalForward 8080 localhost:80"'], "LocalForward"),
        (['"DynamicForward=1080"'], "DynamicForward"),
        (['"SendEnv=*"'], "SendEnv"),
        (['"SetEnv FOO=bar"'], "SetEnv"),
        (['"ForwardAgent=yes"'], "ForwardAgent"),
        (['"RemoteCommand=touch x"'], "RemoteCommand"),
        (['"HostKeyAlias=github.com"'], "HostKeyAlias"),
        (['"Hostname=elsewhere.example"'], "Hostname"),
        (['"Match exec \\"touch {marker}\\""'], "Match"),
    ],
)
def test_ssh_options_that_run_or_load_local_code_are_refused_at_load(tmp_path, options, keyword):
    marker = tmp_path / "pwned"
    text = _bench([o.replace("{marker}", str(marker)) for o in options])
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{_line(text, 'ssh_options')}: [bench] ssh_options: "), message
    assert f"'{keyword}' is not an ssh option a recipe may set" in message
    assert "--ssh-option" in message and "EDGEKIT_SSH_OPTS" in message
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "option, reason",
    [
        ('"=ProxyCommand sh"', "option name cannot be read"),  # ssh skips a leading '='
        ("'Proxy\"Command\" sh'", "option name cannot be read"),  # ssh joins quoted pieces
        ('"-oProxyCommand=sh"', "is not an ssh option a recipe may set"),
        ('"User=bob\\nProxyCommand=touch x"', "line break"),
        ('"IdentityFile=~/.ssh/id\\r"', "line break"),
        ('"IdentityFile=${HOME}/.ssh/id"', "'$' is not allowed"),
        ('"User=$(touch x)"', "'$' is not allowed"),
        ('"User=a;b"', "plain user name"),
        ('"Port="', "has no value"),
        ('"   "', "empty"),
    ],
)
def test_unreadable_or_unsafe_option_text_is_refused(tmp_path, option, reason):
    text = _bench([option])
    with pytest.raises(RecipeError, match=rf"recipe.toml:{_line(text, 'ssh_options')}: \[bench\] ssh_options: .*--ssh-option") as caught:
        load_recipe(_write(tmp_path, text))
    assert reason in str(caught.value)


def test_allowed_ssh_options_load(tmp_path):
    options = ['"IdentityFile=~/.ssh/id"', '"identitiesonly yes"', '"ServerAliveInterval = 30"', '"User=jetson"', '"Port 2222"', '"ConnectTimeout 5"']
    recipe = load_recipe(_write(tmp_path, _bench(options)))
    assert recipe.tables["bench"]["ssh_options"][0] == "IdentityFile=~/.ssh/id"
    assert len(recipe.settings_for(recipe.models[0])["ssh_options"]) == len(options)


def test_the_allow_list_is_one_function():
    for name in RECIPE_SSH_OPTIONS:
        assert recipe_safe_ssh_option(f"{name}=yes") is None, name
        assert recipe_safe_ssh_option(f"  {name.upper()} yes") is None, name
    for name in ("ProxyCommand", "LocalCommand", "PermitLocalCommand", "ProxyJump", "KnownHostsCommand", "RemoteCommand", "Include", "Match",
                 "PKCS11Provider", "SecurityKeyProvider", "ControlPath", "ControlMaster", "ControlPersist", "LocalForward", "RemoteForward",
                 "DynamicForward", "SendEnv", "SetEnv", "ForwardAgent", "ForwardX11", "IdentityAgent", "Tunnel", "EnableSSHKeysign",
                 "HostbasedAuthentication", "GSSAPIDelegateCredentials", "HostKeyAlias", "Hostname", "XAuthLocation",
                 "StrictHostKeyChecking", "UserKnownHostsFile", "GlobalKnownHostsFile", "HostKeyAlgorithms"):
        assert recipe_safe_ssh_option(f"{name}=x"), name
    assert ssh_option_name('  "ProxyCommand" sh') == "ProxyCommand" and ssh_option_name("proxycommand=sh") == "proxycommand"


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_ssh_really_would_run_the_proxycommand(tmp_path):
    """The threat is real here: given the option, ssh runs the command before connecting."""
    marker = tmp_path / "ran"
    subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", f"ProxyCommand=sh -c 'touch {marker}'", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "--", "user@127.0.0.1", "true"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
    )
    assert marker.exists()


def test_run_refuses_a_proxycommand_recipe_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    text = _bench([f"\"ProxyCommand=sh -c 'touch {marker}'\""])
    path = _write(tmp_path, text)
    proc = run_cli("run", str(path), cwd=tmp_path, env={"EDGEKIT_SSH_OPTS": "-F /dev/null"}, timeout=300)
    line = assert_one_line_error(proc, f"recipe.toml:{_line(text, 'ssh_options')}:", "ssh_options", "ProxyCommand", "--ssh-option", code=2)
    assert "EDGEKIT_SSH_OPTS" in line
    assert not marker.exists()
    assert not (tmp_path / "exported").exists()  # refused before any work


# --------------------------------------------------------------------------- remote names


@pytest.mark.parametrize("target", ["-oProxyCommand=sh", "user@-oProxyCommand=sh", "-luser@host", "user@-host:22", "user@h$(touch x)", "us;er@host"])
def test_a_remote_name_cannot_pose_as_an_ssh_option(target):
    with pytest.raises(UsageError, match="user@host"):
        RemoteHost.parse(target)


def test_remote_names_and_paths_in_a_recipe(tmp_path):
    for key, value, fragment in (
        ("remote", "-oProxyCommand=sh", "'remote' must be user@host"),
        ("remote_python", "-c", "'remote_python' cannot be '-c': it begins with '-'"),
        ("remote_dir", "-rf", "'remote_dir' cannot be '-rf': it begins with '-'"),
        ("remote_dir", "a\\nb", "line break"),
    ):
        text = HEAD + f'\n[bench]\n{key} = "{value}"\n'
        with pytest.raises(RecipeError) as caught:
            load_recipe(_write(tmp_path, text))
        assert str(caught.value).startswith(f"{tmp_path / 'recipe.toml'}:{_line(text, key + ' =')}: ")
        assert fragment in str(caught.value)


def test_the_destination_follows_a_double_dash():
    args = ssh_command(RemoteHost.parse("edge@jetson.local:2222"), SshSettings(("IdentityFile=~/.ssh/id",)), "true")
    assert args[-3:] == ["--", "edge@jetson.local", "true"]
    from edgekit.remote import _argument_path, remote_path

    # remote paths reach the remote shell quoted, and never as an option of cd, rm or tar
    assert _argument_path("-rf/bundle") == "./-rf/bundle" and _argument_path("a b/c") == "'a b/c'"
    assert remote_path("~/py; touch x") == "~/'py; touch x'"


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    "replace, key, expected",
    [
        (("batch = [1]", "batch = [true]"), "batch", "a list of integers >= 1"),
        (("batch = [1]", "batch = [1, false]"), "batch", "a list of integers >= 1"),
        (("input_size = 64", "input_size = true"), "input_size", "an integer in [16, 2048]"),
        (("input_size = 64", "input_size = 100000"), "input_size", "an integer in [16, 2048]"),
        (("[export]", "[int8]\npercentile = nan\n[export]"), "percentile", "a number in (50, 100]"),
        (("[export]", "[int8]\npercentile = inf\n[export]"), "percentile", "a number in (50, 100]"),
        (("[export]", "[int8]\npercentile = 50\n[export]"), "percentile", "a number in (50, 100]"),
        (("[export]", "[int8]\nmax_kl = inf\n[export]"), "max_kl", "a finite number >= 0"),
        (("[export]", "[int8]\nmax_kl = nan\n[export]"), "max_kl", "a finite number >= 0"),
        (("[export]", "[int8]\nmax_kl = -0.1\n[export]"), "max_kl", "a finite number >= 0"),
        (("[export]", "[int8]\nmin_agreement = 120\n[export]"), "min_agreement", "a number in [0, 100]"),
        (("[export]", "[int8]\nmax_drop = -inf\n[export]"), "max_drop", "a number in [0, 100]"),
        (("[export]", "[int8]\nseed = true\n[export]"), "seed", "an integer >= 0"),
        (("[export]", "[prune]\nratio = nan\n[export]"), "ratio", "a number in (0, 1)"),
        (("[export]", "[dw_separable]\nbudget = inf\n[export]"), "budget", "a finite number >= 0"),
        (("[export]", "[bench]\nmax_seconds = nan\n[export]"), "max_seconds", "a finite number >= 0.1"),
        (("[export]", "[bench]\niterations = true\n[export]"), "iterations", "an integer >= 1"),
    ],
)
def test_bools_nan_inf_and_out_of_range_numbers_are_refused(tmp_path, replace, key, expected):
    text = HEAD.replace(*replace)
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, text))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'recipe.toml'}:{_line(text, key + ' =')}: '{key}' must be {expected}, got "), message


def test_every_numeric_key_refuses_bools_nan_and_inf():
    checked = 0
    for section, keys in recipe_options().items():
        for key, option in keys.items():
            check = option.check
            numeric = [v for v in (0, 1, 8, 16, 64, 0.5, 1.0, 99.9) if check(v)]
            listed = [v for v in ([1], [8]) if check(v)]
            for bad in (True, False, math.nan, math.inf, -math.inf) if numeric else ():
                assert not check(bad), f"[{section}] {key} accepts {bad!r}"
            for bad in ([True], [False], [math.nan], [math.inf]) if listed else ():
                assert not check(bad), f"[{section}] {key} accepts {bad!r}"
            checked += bool(numeric or listed)
    assert checked >= 20


def test_edge_values_that_are_fine_still_load(tmp_path):
    text = HEAD.replace('variants = ["fp32"]', 'variants = ["int8"]') + "\n[int8]\npercentile = 100\nmax_kl = 0\nmin_agreement = 0\nmax_drop = 100\n[bench]\nmax_seconds = 0.1\n"
    recipe = load_recipe(_write(tmp_path, text))
    settings = recipe.settings_for(recipe.models[0])
    assert settings["percentile"] == 100 and settings["max_seconds"] == 0.1


def test_a_binary_recipe_is_one_line(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfd")
    with pytest.raises(RecipeError, match="recipe.toml: not a TOML text file") as caught:
        load_recipe(path)
    assert "\n" not in str(caught.value)
    latin1 = _write(tmp_path, HEAD, name="latin1.toml")
    latin1.write_bytes(HEAD.encode() + 'name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(RecipeError, match="latin1.toml: not a TOML text file"):
        load_recipe(latin1)
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert_one_line_error(proc, "recipe.toml: not a TOML text file", code=2)
