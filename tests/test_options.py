"""Every option is declared once (edgekit.options); each interface generated from the
declarations has it, with the same default."""

import argparse
from pathlib import Path

import pytest

from edgekit import options
from edgekit.cli import main
from edgekit.options import BY_KEY, DEVICE_DEFAULTS_FROM_BUNDLE, OPTIONS, Settings, device_options, recipe_options, runner_argv

# options a command has beside the declared ones: what it writes, and help
COMMAND_OWN = {"export": set(), "bench": {"json_path"}, "bundle": {"bundle_dir"}, "finetune": set(), "profile": {"json_path", "top", "no_accuracy"}}


def _click_params(command: str) -> dict:
    return {p.name: p for p in main.commands[command].params if p.param_type_name == "option" and p.name != "help"}


@pytest.mark.parametrize("command", options.COMMANDS)
def test_each_command_has_exactly_its_declared_options_with_their_defaults(command):
    params = _click_params(command)
    declared = {o.key for o in options.options_for(command)}
    assert set(params) - COMMAND_OWN[command] == declared
    for key in declared:
        option, param = BY_KEY[key], params[key]
        assert option.flag in param.opts or f"--no-{option.flag[2:]}" in param.secondary_opts, key
        default = tuple(option.default or ()) if option.kind == "list" else option.default
        if command in option.required_in:
            default = () if option.kind == "list" else None
            assert param.required, key
        if option.kind in ("flag", "switch"):
            default = bool(option.default)
        assert param.default == default, key
        assert param.help, f"{option.flag} has no help text"


def test_every_recipe_key_is_an_option_with_the_same_default(tmp_path):
    from edgekit.recipe import load_recipe

    for section, keys in recipe_options().items():
        for key, option in keys.items():
            assert option.recipe_path == (section, key)
    recipe = tmp_path / "r.toml"
    recipe.write_text('models = ["squeezenet1_1"]\nvariants = ["fp32"]\nbackends = ["onnxruntime"]\n')
    settings = load_recipe(recipe).settings_for("squeezenet1_1")
    for option in OPTIONS:
        if option.key not in ("backends",):
            assert settings[option.key] == Settings()[option.key], option.key


def test_recipe_values_reach_the_same_settings_as_flags(tmp_path):
    from edgekit.recipe import load_recipe

    (tmp_path / "r.toml").write_text(
        'models = ["squeezenet1_1"]\nvariants = ["pruned+int8", "dw-separable"]\nbackends = ["onnxruntime", "openvino"]\nbatch = [1, 8]\n'
        '[int8]\ncalib_method = "minmax"\nbias_correction = false\n[prune]\nratio = 0.3\n[distill]\nsteps = 5\n'
        '[dw_separable]\nlayers = ["a", "b"]\n[bench]\nviews = 2\nthreads = 1\n'
    )
    from_recipe = load_recipe(tmp_path / "r.toml").settings_for("squeezenet1_1")
    from_flags = Settings(
        backends=("onnxruntime,openvino",), batch=(1, 8), calib_method="minmax", bias_correction=False, prune=0.3,
        distill_steps=5, dw_layers=("a,b",), views=2, threads=1,
    )
    for key in ("backends", "batch", "calib_method", "bias_correction", "prune", "distill_steps", "dw_layers", "views", "threads"):
        assert from_recipe[key] == from_flags[key], key


def test_the_device_runner_parses_every_device_option_with_the_same_default():
    from edgekit.device_runner import _parser

    parser = _parser()
    bench = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("bench"))  # noqa: SLF001
    actions = {a.dest: a for a in bench._actions}  # noqa: SLF001
    for option in device_options():
        assert option.key in actions, option.key
        assert option.flag in actions[option.key].option_strings
        expected = None if option.key in DEVICE_DEFAULTS_FROM_BUNDLE or option.kind == "list" else option.default
        assert actions[option.key].default == expected or (option.kind == "flag" and actions[option.key].default is False), option.key


def test_remote_argv_round_trips_through_the_device_runner():
    from edgekit.device_runner import _parser

    settings = Settings(batch=(1, 8), iterations=7, warmup=2, max_seconds=3.5, repeats=2, throughput=1.0, power="off",
                        device="cuda", threads=3, precision="f16", ov_fp16_weights=True, trt_workspace="2GiB", cuda_graph=True)
    args = _parser().parse_args(["bench", *runner_argv(settings)])
    for option in device_options():
        if option.key in ("backends", "data", "labels"):
            continue
        value = getattr(args, option.key)
        assert (tuple(value) if option.kind == "list" else value) == settings[option.key], option.key


def test_a_wrong_value_is_refused_the_same_way_everywhere(tmp_path):
    from edgekit.recipe import RecipeError, load_recipe

    (tmp_path / "r.toml").write_text('models = ["m"]\nvariants = ["fp32"]\nbackends = ["onnxruntime"]\n[bench]\niterations = 0\n')
    with pytest.raises(RecipeError, match="'iterations' must be an integer >= 1"):
        load_recipe(tmp_path / "r.toml")
    from edgekit.device_runner import _parser

    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", "--iterations", "0"])
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["bench", "--iterations", "0"])
    assert result.exit_code == 2 and "--iterations" in result.output


def test_settled_defaults():
    """Where the copies had drifted: views per image is one rule for bench, recipes and
    bundles (1 per file of a folder, the 11 held-out views of the bundled photos), and
    distillation is its own group for pruning and conversion alike."""
    assert BY_KEY["views"].default is None
    from edgekit.data import evaluation_images

    assert evaluation_images().views_per_image == 11 and evaluation_images().view_offset == 0
    assert evaluation_images("folder").views_per_image == 1
    assert BY_KEY["distill_steps"].recipe_path == ("distill", "steps")


def test_comma_separated_lists_are_split_once():
    assert Settings(backends=("pytorch,openvino", "tensorrt", "openvino"))["backends"] == ("pytorch", "openvino", "tensorrt")
    with pytest.raises(Exception, match="unknown option"):
        Settings(not_an_option=1)


def test_argparse_types_refuse_out_of_range_values():
    parser = argparse.ArgumentParser()
    BY_KEY["percentile"].add_argument(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--percentile", "101"])


def test_settings_are_read_through_bindings_only():
    """Every consumer takes a typed dataclass bound to its options (Settings.bind,
    Option.field): no string lookups like settings["max_fallback"] outside the catalogue,
    where a renamed key would fail only at run time."""
    import re

    package = Path(__file__).resolve().parent.parent / "edgekit"
    lookup = re.compile(r"""settings\[\s*["']""")
    found = [f"{path.relative_to(package)}:{number}" for path in package.rglob("*.py") if path.name not in ("options.py", "option.py")
             for number, line in enumerate(path.read_text().splitlines(), 1) if lookup.search(line)]
    assert not found, found
