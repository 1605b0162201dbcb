"""Nothing silently ignored: every option of every command, set without what enables it
(its step, its backend, the option it qualifies), is a one-line UsageError naming it or
changes what a consumer receives; set with it, it is accepted and changes what a consumer
receives. The consumers are the real functions the steps, the bench and the launcher
call with the Settings (the options dataclasses, image requests and arguments that go into
each artifact's key or the bench request); no model is built, no backend is mocked.

And `--help`: every option has a help line, the benchmark options come first, the variant
flags sit together."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import click
import pytest
from click.testing import CliRunner

import edgekit
import edgekit.backends
from edgekit.cli import main
from edgekit.core import EdgekitError, UsageError
from edgekit.options import BY_KEY, BY_STEP, COMMANDS, GROUPS, OPTIONS, STEP_TEXT, Option, Settings, check_applicable, options_for

MODEL = "squeezenet1_1"
# Values other than the default, where the kind gives none of its own (paths need not
# exist: nothing here reads them, but the classes file, made per test).
VALUES: dict[str, Any] = {
    "weights": "w.pt", "weights_key": "model_ema", "preprocessing": "pre.json", "artifacts": "elsewhere",
    "calib": "calib", "calib_labels": "calib.txt", "distill_data": "unlabelled", "data": "images", "labels": "labels.txt",
    "sparsity": "2:4", "trt_workspace": "2GiB", "remote": "me@device", "remote_python": "python3.12", "remote_dir": "bundles",
    "device": "cuda", "backends": ("openvino",), "batch": (8,), "dw_layers": ("features.1",), "ssh_options": ("IdentityFile=key",),
}
# What the target decides, not an option: --preprocessing describes an imported ONNX file
# (a model name refuses it in one line), so it is read with an ONNX file as the target.
ONNX_TARGET = {"preprocessing"}


def value_for(option: Option, tmp_path: Path) -> Any:
    """A valid value other than the option's default."""
    if option.key == "classes":
        path = tmp_path / "classes.txt"
        path.write_text("cat\ndog\n")
        return str(path)
    if option.key in VALUES:
        return VALUES[option.key]
    if option.kind == "flag":
        return True
    if option.kind == "switch":
        return not option.default
    if option.kind == "choice":
        return next(c for c in reversed(option.choices) if c != option.default)  # the last: a default "auto" may resolve to the first
    if option.kind in ("int", "float"):
        d = option.default
        if d is None:
            lo, hi = option.minimum, option.maximum
            candidates = [(lo + hi) / 2 if lo is not None and hi is not None else (lo or 0) + 1]
        else:
            candidates = [d + 1, d * 2, d / 2, d - 1, d - 0.1]
        for c in candidates:
            c = int(c) if option.kind == "int" else float(c)
            if c != d and option.check(c):
                return c
    raise AssertionError(f"no test value for {option.key}: add one to VALUES")


# --------------------------------------------------------------------------- what consumers receive


def _outcome(function, *args) -> Any:
    """A consumer's result, or ('refused', message) for a one-line UsageError."""
    try:
        return function(*args)
    except UsageError as e:
        return ("refused", str(e))


def _strict_exit(settings: Settings) -> str:
    """What `export`/`bench` do with an artifact whose INT8 budget was not met."""
    from edgekit.api import raise_if_budget_missed

    try:
        raise_if_budget_missed(SimpleNamespace(manifest={"quantization": {"budget_met": False}}, path="a"), settings["strict"])
    except EdgekitError:
        return "exit 1"
    return "exit 0"


def _step_inputs(step: str, s: Settings) -> Any:
    """What each step's run() passes on (and hashes into its artifact key)."""
    from edgekit.data import evaluation_images, training_images
    from edgekit.steps.finetune import finetune_options
    from edgekit.steps.int8 import calibration_images, pricing_backends, qat_images, qat_options, quantize_options
    from edgekit.steps.prune import PruneTarget, prune_options
    from edgekit.steps.structural import distill_images, distill_options

    if step == "finetuned":  # finetune_options and the images of training_split
        return (finetune_options(s), training_images(s["data"], s["labels"], s["val_split"], s["seed"]),
                evaluation_images(s["data"], s["labels"], 1, None, s["seed"], s["val_split"]) if s["data"] else None)
    if step == "int8":
        return quantize_options(s), qat_options(s), calibration_images(s), qat_images(s), pricing_backends(s), _strict_exit(s)
    if step == "pruned":
        target = PruneTarget(s["prune_target"], s["prune"]) if s["prune_target"] else None
        return prune_options(s), target, distill_images(s), distill_options(s), s["sparsity"]
    if step == "dw-separable":
        return s["dw_rank"], distill_images(s), s["dw_layers"] or None, s["dw_budget"], distill_options(s)
    return (calibration_images(s),)  # fp16: its calibration images


def consumed(command: str, settings: Settings, onnx_target: bool = False) -> dict[str, Any]:
    """Everything the command hands its consumers, from these settings."""
    from edgekit.classes import resolve_class_set
    from edgekit.launch import launcher_for
    from edgekit.session import bench_request
    from edgekit.steps import variant_from_settings
    from edgekit.steps.export import export_options, model_request

    out: dict[str, Any] = {"artifact root": Path(settings["artifacts"])}  # plan.build, open_target
    if onnx_target:  # open_target -> import_onnx_file
        out["import"] = (settings["preprocessing"], _outcome(resolve_class_set, settings["num_classes"], settings["classes"]))
    else:
        out["export"] = (_outcome(model_request, MODEL, settings), export_options(settings))
    variant = "finetuned" if command == "finetune" else variant_from_settings(settings)
    for step in variant.split("+"):
        if step in STEP_TEXT:
            out[step] = _step_inputs(step, settings)
    if command in ("bench", "profile", "bundle"):
        out["bench request"] = bench_request(settings)
    if command == "bench":
        out["launcher"] = _outcome(lambda: getattr(launcher_for(settings), "remote", None))
    return out


def checked(command: str, settings: Settings) -> None:
    """The check each entry point makes (api.export for export, bundle and finetune;
    api._requested_cell for bench and profile)."""
    if command == "finetune":
        check_applicable(settings, (), ("finetuned",))
    elif command == "export":
        check_applicable(settings, settings["backends"] if settings.given("backends") else (), None)
    else:
        check_applicable(settings, settings["backends"])


def enablers(option: Option, command: str, tmp_path: Path) -> dict[str, Any]:
    """The values that make ``option`` read, from its declaration: for each entry of its
    needs, the first alternative this command can give, and one of its backends."""
    commanded = {o.key for o in options_for(command)}

    def possible(condition: str) -> bool:
        if condition in STEP_TEXT:
            return command == "finetune" and condition == "finetuned" or BY_STEP[condition].key in commanded
        if condition == "bench":
            return command in ("bench", "profile", "bundle")
        return condition.startswith("!") or condition.partition("=")[0] in commanded

    values: dict[str, Any] = {}
    pending = [option]
    while pending:
        current = pending.pop()
        for clause in current.needs:
            alternative = next((a for a in clause.split("|") if all(possible(c) for c in a.split("&"))), None)
            assert alternative is not None, f"{current.flag} can never be enabled in `edgekit {command}`: {clause}"
            for condition in alternative.split("&"):
                if condition in STEP_TEXT:
                    if not (command == "finetune" and condition == "finetuned"):
                        values.setdefault(BY_STEP[condition].key, value_for(BY_STEP[condition], tmp_path))
                        pending.append(BY_STEP[condition])
                elif condition != "bench" and not condition.startswith("!"):
                    key, _, wanted = condition.partition("=")
                    if key not in values:
                        values[key] = wanted or value_for(BY_KEY[key], tmp_path)
                        pending.append(BY_KEY[key])
        if current.applies_to:
            values.setdefault("backends", (current.applies_to[0],))
    return values


def _refusal(command: str, settings: Settings) -> Optional[str]:
    try:
        checked(command, settings)
    except UsageError as e:
        return str(e)
    return None


@pytest.mark.parametrize("command", COMMANDS)
def test_no_option_is_silently_ignored(command, tmp_path):
    problems = []
    for option in options_for(command):
        value = value_for(option, tmp_path)
        onnx = option.key in ONNX_TARGET
        # without what enables it: refused in one line naming it, or read all the same
        alone = Settings({option.key: value})
        refused = _refusal(command, alone)
        if refused is not None:
            if "\n" in refused or option.flag not in refused:
                problems.append(f"{option.flag}: not a one-line error naming it: {refused!r}")
        elif consumed(command, alone) == consumed(command, Settings()):  # a consumer's one-line refusal is a change too
            problems.append(f"{option.flag} {value!r} is accepted without what enables it and changes nothing")
        # with it: accepted, and a consumer receives something else
        base = enablers(option, command, tmp_path)
        with_it, baseline = Settings({**base, option.key: value}), Settings(base)
        for settings, label in ((baseline, "its enablers"), (with_it, "it")):
            refused = _refusal(command, settings)
            if refused is not None:
                problems.append(f"{option.flag} with {base}: {label} refused: {refused}")
        if consumed(command, with_it, onnx) == consumed(command, baseline, onnx):
            problems.append(f"{option.flag} {value!r} with {base or 'nothing else'} changes nothing a consumer receives")
    assert not problems, "\n".join(problems)


def test_every_declared_condition_names_a_step_an_option_or_the_bench():
    for option in OPTIONS:
        for clause in option.needs + ((option.step,) if option.step else ()):
            for alternative in clause.split("|"):
                for condition in alternative.split("&"):
                    key = condition.lstrip("!").partition("=")[0]
                    assert condition in STEP_TEXT or condition == "bench" or key in BY_KEY, f"{option.key}: {condition!r}"
                    if "=" in condition:
                        assert condition.partition("=")[2] in BY_KEY[key].choices, f"{option.key}: {condition!r}"
    assert set(BY_STEP) == set(STEP_TEXT)  # every step has its flag


def test_each_backend_option_is_declared_by_the_backends_that_read_it():
    """A backend's own options live in its module (Backend.options) and bind to its typed
    options (options_type): every declared option but the shared thread count is a field
    there, and the catalogue says it applies to exactly the backends declaring it."""
    from dataclasses import fields

    from edgekit.backends.base import BACKENDS, THREADS, get_backend

    declared: dict[str, set] = {}
    for name in BACKENDS.names():
        backend = get_backend(name)
        bound = {f.metadata.get("option", f.name) for f in fields(backend.options_type)} if backend.options_type else set()
        for option in backend.options:
            declared.setdefault(option.key, set()).add(name)
            assert option is THREADS or option.key in bound, f"{name} declares {option.key} but its options_type does not read it"
    for key, names in declared.items():
        assert set(BY_KEY[key].applies_to) == names, key
    assert {"threads", "precision", "ov_fp16_weights", "trt_workspace", "cuda_graph", "throughput"} <= set(declared)


# --------------------------------------------------------------------------- every entry point reaches the check


@pytest.mark.parametrize("args, message", [
    (["bench", "--calib", "mydata/"], "error: --calib applies to INT8"),
    (["bench", "--calib-method", "entropy"], "error: --calib-method applies to INT8; add --int8"),
    (["bench", "--int8", "--calib-method", "minmax", "--percentile", "99"], "error: --percentile applies with --calib-method percentile"),
    (["bench", "--int8", "--qat-lr", "0.01"], "error: --qat-lr applies with --qat-epochs"),
    (["bench", "--throughput", "2"], "error: --throughput applies to the openvino backend; add --backend openvino"),
    (["bench", "--backend", "tensorrt", "--threads", "2"], "error: --threads applies to the pytorch, onnxruntime, openvino, litert and executorch backends"),
    (["profile", "--sparsity", "0.5"], "error: --sparsity applies to pruning; add --prune"),
    (["export", MODEL, "--ft-epochs", "2"], "error: --ft-epochs applies to fine-tuning; add --finetune"),
    (["export", MODEL, "--data", "images"], "error: --data applies to a bench"),
    (["export", MODEL, "--dw-separable", "--dw-layer", "a", "--dw-budget", "0.1"], "error: --dw-budget applies without --dw-layer; drop --dw-layer"),
    (["bundle", MODEL, "--backend", "onnxruntime", "-o", "b", "--distill-steps", "5"], "error: --distill-steps applies to pruning or depthwise-separable conversion"),
    (["finetune", MODEL, "--labels", "labels.txt"], "error: --labels applies with --data; add --data"),
])
def test_every_command_refuses_an_option_nothing_reads_in_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message), line
    assert not (tmp_path / "exported").exists()  # before any work


def test_the_finetune_command_reads_the_fine_tuning_options():
    check_applicable(Settings(ft_epochs=2, ft_lr=0.01, seed=3, data="d"), (), ("finetuned",))


def test_recipes_name_the_key_and_the_variant_that_enables_it(tmp_path):
    from edgekit.recipe import RecipeError, load_recipe

    head = 'models = ["squeezenet1_1"]\nvariants = ["fp32"]\nbackends = ["onnxruntime"]\n'
    cases = [
        ("[int8]\ncalib_method = \"entropy\"\n", 5, "[int8] calib_method applies to INT8; add a variant with int8 to 'variants'"),
        ("[prune]\nratio = 0.3\n", 5, "[prune] ratio applies to pruning; add a variant with pruned to 'variants'"),
        ("[distill]\nsteps = 5\n", 5, "[distill] steps applies to pruning or depthwise-separable conversion"),
        ("[bench]\nthroughput = 2.0\n", 5, "[bench] throughput applies to the openvino backend; add 'openvino' to 'backends'"),
    ]
    for table, line, message in cases:
        path = tmp_path / "r.toml"
        path.write_text(head + table)
        with pytest.raises(RecipeError) as caught:
            load_recipe(path)
        assert str(caught.value) == f"{path}:{line}: {message}" or str(caught.value).startswith(f"{path}:{line}: {message}"), str(caught.value)
    # the same keys with a variant that reads them load
    path.write_text(head.replace('["fp32"]', '["fp32", "pruned+int8", "dw-separable"]').replace('["onnxruntime"]', '["onnxruntime", "openvino"]')
                    + '[int8]\ncalib_method = "entropy"\n[prune]\nratio = 0.3\n[distill]\nsteps = 5\n[bench]\nthroughput = 2.0\n')
    load_recipe(path)
    # a default value asks for nothing (the README's [distill] steps = 200 beside fp32 and int8)
    path.write_text(head + "[distill]\nsteps = 200\n")
    load_recipe(path)


def test_the_python_api_reaches_the_check():
    with pytest.raises(UsageError, match="--calib-method applies to INT8; add --int8"):
        edgekit.export(MODEL, calib_method="entropy")
    with pytest.raises(UsageError, match="--calib-method applies to INT8; use a variant with int8"):
        edgekit.export(MODEL, variant="fp16", calib_method="entropy")
    with pytest.raises(UsageError, match="--throughput applies to the openvino backend"):
        edgekit.bench(MODEL, throughput=2.0)


# --------------------------------------------------------------------------- --help


def test_every_option_of_every_command_has_a_help_line():
    missing = [f"edgekit {name} {param.opts[0]}" for name, command in main.commands.items()
               for param in command.params if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert not missing, missing
    for option in OPTIONS:
        assert option.group in GROUPS, option.key
        if option.key not in PARAGRAPHS:
            assert len(option.help) <= 160, f"{option.flag or option.key}: help is a paragraph ({len(option.help)} characters)"


PARAGRAPHS: set[str] = set()  # options whose help may be longer than two lines (none)


def test_bench_help_starts_with_what_people_reach_for():
    text = CliRunner().invoke(main, ["bench", "--help"]).output
    lines = text.splitlines()
    assert "default: efficientnet_lite0" in " ".join(" ".join(lines[:6]).split())  # what a bare `edgekit bench` measures
    first = {flag: next(i for i, line in enumerate(lines) if line.lstrip().startswith(flag + " ")) for flag in ("--backend", "--batch", "--iterations")}
    assert max(first.values()) < 25, first
    variants = [i for i, line in enumerate(lines) if line.lstrip().split(" ")[0] in {o.flag for o in BY_STEP.values()}]
    assert len(variants) == len(BY_STEP) and max(variants) - min(variants) < 2 * len(variants) + 2, variants  # one section
    seed = next(i for i, line in enumerate(lines) if line.lstrip().startswith("--seed "))
    header = next(line for line in reversed(lines[:seed]) if line and not line.startswith(" "))
    assert header.rstrip(":") == GROUPS["general"]


def test_export_options_are_refused_where_the_target_was_exported_already(tmp_path):
    """An artifact folder or an ONNX file is not exported again: --opset, --weights... would do nothing."""
    from conftest import assert_one_line_error, run_cli

    folder = tmp_path / "artifact"
    folder.mkdir()
    proc = run_cli("bench", str(folder), "--opset", "13", "--static", "--backend", "onnxruntime", cwd=tmp_path)
    assert_one_line_error(proc, "--opset, --static make an export from a model name, not an artifact folder", code=2)
    proc = run_cli("bench", str(tmp_path / "model.onnx"), "--input-size", "128", "--backend", "onnxruntime", cwd=tmp_path)
    assert_one_line_error(proc, "--input-size makes an export from a model name, not an ONNX file", code=2)
    assert not (tmp_path / "exported").exists()
