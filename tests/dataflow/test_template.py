"""The Flex Template files: Dockerfile conventions and version pins, metadata.json against the options,
the entry module's launch-argument handling, and no credentials in what ships."""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


entry = load("flex_template_main", TEMPLATES / "main.py")
metadata_gen = load("flex_template_metadata", TEMPLATES / "generate_metadata.py")


# --- Dockerfile -------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def setup_beam_version() -> str:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "BEAM_VERSION" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no BEAM_VERSION")


def beam_pin_problems(dockerfile: str, requirements: str, beam_version: str) -> list[str]:
    """Every place the image names a Beam version, compared with setup.py's."""
    problems = []
    sdk_tags = re.findall(r"--from=apache/beam_python(\d)\.(\d+)_sdk:(\S+)", dockerfile)
    if len(sdk_tags) != 1:
        problems.append(f"expected one COPY --from=apache/beam_pythonX.Y_sdk:VERSION, found {sdk_tags}")
    for _major, _minor, tag in sdk_tags:
        if tag != beam_version:
            problems.append(f"Dockerfile Beam SDK image {tag} != setup.py BEAM_VERSION {beam_version}")
    pins = re.findall(r"^apache-beam(?:\[[^\]]*\])?==(\S+)", requirements, flags=re.M)
    if pins != [beam_version]:
        problems.append(f"templates/requirements.txt pins apache-beam {pins}, setup.py {beam_version}")
    return problems


DOCKERFILE = (TEMPLATES / "Dockerfile").read_text()
REQUIREMENTS = (TEMPLATES / "requirements.txt").read_text()
INSTRUCTIONS = dockerfile_instructions(DOCKERFILE)


def args_of(kind: str) -> list[str]:
    return [args for instruction, args in INSTRUCTIONS if instruction == kind]


def test_beam_version_in_image_equals_setup_py():
    assert beam_pin_problems(DOCKERFILE, REQUIREMENTS, setup_beam_version()) == []


def test_beam_drift_is_detected():
    drifted = DOCKERFILE.replace(f"_sdk:{setup_beam_version()}", "_sdk:2.66.0")
    assert drifted != DOCKERFILE
    assert beam_pin_problems(drifted, REQUIREMENTS, setup_beam_version()) == [
        f"Dockerfile Beam SDK image 2.66.0 != setup.py BEAM_VERSION {setup_beam_version()}"
    ]
    stale = REQUIREMENTS.replace(f"=={setup_beam_version()}", "==2.60.0")
    assert len(beam_pin_problems(DOCKERFILE, stale, setup_beam_version())) == 1


def test_one_python_version_for_base_sdk_and_launcher():
    base = re.fullmatch(r"python:(\d+\.\d+)-slim", args_of("FROM")[0])
    assert base, args_of("FROM")
    sdk = re.search(r"beam_python(\d+\.\d+)_sdk", DOCKERFILE)[1]
    launcher = re.search(r"dataflow-templates-base/python(\d)(\d+)-template-launcher-base", DOCKERFILE)
    assert base[1] == sdk == f"{launcher[1]}.{launcher[2]}"


def test_sdk_boot_and_launcher_in_one_image():
    copies = args_of("COPY")
    assert any(
        c.startswith("--from=apache/beam_python") and c.endswith("/opt/apache/beam /opt/apache/beam") for c in copies
    )
    launcher = "/opt/google/dataflow/python_template_launcher"
    assert any(
        c.startswith("--from=gcr.io/dataflow-templates-base/") and c.endswith(f"{launcher} {launcher}") for c in copies
    )
    assert args_of("ENTRYPOINT") == ['["/opt/apache/beam/boot"]']
    assert len(args_of("FROM")) == 1


def test_entry_module_installed_package_cuda_torch_and_pip_check():
    env = " ".join(args_of("ENV"))
    py_file = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=(\S+)", env)[1]
    assert f"templates/main.py {py_file}" in args_of("COPY")
    runs = " && ".join(args_of("RUN"))
    assert "pip install --no-deps /template/src" in runs
    assert "pip check" in runs
    assert "torch.version.cuda" in runs
    index = re.search(r"ARG TORCH_INDEX_URL=(\S+)", DOCKERFILE)[1]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index)
    torch_arg = re.search(r"ARG TORCH_VERSION=(\S+)", DOCKERFILE)[1]
    assert f"torch=={torch_arg}" in (ROOT / "Makefile").read_text()  # the same torch as local runs


def test_every_copied_path_exists_and_packages_are_copied():
    sources = [c.split()[0] for c in args_of("COPY") if not c.startswith("--from")]
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    tree = ast.parse((ROOT / "setup.py").read_text())
    packages = next(
        ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "PACKAGES"
    )
    for package in packages:
        assert package in sources, f"the image does not copy the package {package}"


def test_requirements_pin_every_runtime_dependency_of_setup_py():
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kwargs = {k.arg: k.value for k in call.keywords}
    install = [ast.unparse(e).strip("'\"f") for e in kwargs["install_requires"].elts]
    names = {re.split(r"[\[<>=!~ ]", req)[0].lower() for req in install} - {"torch"}
    pinned = {}
    for line in REQUIREMENTS.splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[re.split(r"\[", name)[0].lower()] = version
    assert names <= set(pinned), f"unpinned in templates/requirements.txt: {sorted(names - set(pinned))}"
    assert all(re.fullmatch(r"\d+(\.\d+)*", v) for v in pinned.values()), pinned


# --- metadata.json ----------------------------------------------------------------------------------------

METADATA = json.loads((TEMPLATES / "metadata.json").read_text())
PARAMS = {p["name"]: p for p in METADATA["parameters"]}


def options_parser() -> argparse.ArgumentParser:
    from pipelines.options import GemmaOptions

    parser = argparse.ArgumentParser(add_help=False)
    GemmaOptions._add_argparse_args(parser)
    return parser


def test_committed_metadata_is_generated_from_current_options():
    assert (TEMPLATES / "metadata.json").read_text() == metadata_gen.render(), (
        "templates/metadata.json is stale: run python templates/generate_metadata.py"
    )


def test_metadata_and_pipeline_options_list_the_same_parameters():
    option_names = {a.dest for a in options_parser()._actions if a.option_strings}
    launch_names = set(entry.LAUNCH_FLAGS)
    assert set(PARAMS) == option_names | launch_names


def test_every_parameter_has_label_help_and_valid_regexes():
    for name, param in PARAMS.items():
        assert param["label"] and param["helpText"], name
        for regex in param.get("regexes", []):
            re.compile(regex)
    unvalidated = sorted(name for name, p in PARAMS.items() if "regexes" not in p)
    assert unvalidated == [], f"parameters without validation: {unvalidated}"
    assert [n for n, p in PARAMS.items() if not p["isOptional"]] == ["input", "output"]


def matches(name: str, value: str) -> bool:
    return all(re.fullmatch(regex, value) for regex in PARAMS[name]["regexes"])


def test_regexes_accept_defaults_and_choices_of_the_options():
    for action in options_parser()._actions:
        if not action.option_strings:
            continue
        if action.choices:
            assert all(matches(action.dest, str(choice)) for choice in action.choices), action.dest
        if action.default is not None and action.nargs != 0:
            assert matches(action.dest, str(action.default)), (action.dest, action.default)


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("input", "gs://my-bucket/reviews/{run_date}/*.jsonl", "/home/me/reviews.jsonl"),
        ("output", "gs://my-bucket/out/2026-11-23", "out/"),
        ("model", "gs://my-bucket/models/gemma-3-1b/", "/models/gemma"),
        ("task", "summarize", "translate"),
        ("max_new_tokens", "128", "lots"),
        ("temperature", "0.7", "-1"),
        ("task_labels", "billing,bug,other", "billing"),
        ("run_date", "2026-11-23", "yesterday"),
        ("no_calibration", "true", "yes"),
    ],
)
def test_regexes_tell_good_values_from_bad(name, good, bad):
    assert matches(name, good)
    assert not matches(name, bad)


def test_no_secret_like_parameter_names():
    secretish = [n for n in PARAMS if re.search(r"(?i)secret|password|credential|api_?key|token(?!s$)", n)]
    assert secretish == []


# --- entry module -----------------------------------------------------------------------------------------

TODAY = datetime.date(2026, 11, 23)


def test_run_date_placeholder_uses_offset_from_today():
    argv = ["--input=gs://b/in/{run_date}/*.jsonl", "--output=gs://b/out/{run_date}", "--run_date_offset_days=-1"]
    assert entry.expand_launch_args(argv, [], True, TODAY) == [
        "--input=gs://b/in/2026-11-22/*.jsonl",
        "--output=gs://b/out/2026-11-22",
        "--run_date=2026-11-22",
    ]


def test_explicit_run_date_wins_and_is_only_passed_when_the_pipeline_declares_it():
    argv = ["--input=gs://b/{run_date}.jsonl", "--run_date=2026-01-31", "--run_date_offset_days=-3"]
    assert entry.expand_launch_args(argv, [], False, TODAY) == ["--input=gs://b/2026-01-31.jsonl"]
    with pytest.raises(ValueError, match="--run_date must be a date like 2026-01-31"):
        entry.expand_launch_args(["--run_date=31/01/2026"], [], False, TODAY)


def test_boolean_parameters_become_argparse_flags():
    argv = ["--no_calibration=true", "--task=sentiment"]
    assert entry.expand_launch_args(argv, ["no_calibration"], False, TODAY) == ["--no_calibration", "--task=sentiment"]
    assert entry.expand_launch_args(["--no_calibration=false"], ["no_calibration"], False, TODAY) == []
    with pytest.raises(ValueError, match="takes true or false"):
        entry.expand_launch_args(["--no_calibration=1"], ["no_calibration"], False, TODAY)


def test_entry_module_reads_boolean_flags_from_the_options():
    bools, _ = entry.pipeline_flags()
    assert "no_calibration" in bools
    assert "task" not in bools


# --- credentials ------------------------------------------------------------------------------------------

SECRET_PATTERNS = [
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"\"private_key(_id)?\"\s*:",
    r"AIza[0-9A-Za-z_\-]{35}",
    r"ya29\.[0-9A-Za-z_\-]+",
    r"(?i)(password|secret)\s*[:=]\s*\S+",
]


def test_no_credentials_in_shipped_dataflow_files():
    files = [*TEMPLATES.iterdir(), ROOT / "Makefile", ROOT / "docs" / "dataflow.md"]
    for path in files:
        if path.is_file() and path.suffix != ".pyc":
            text = path.read_text()
            for pattern in SECRET_PATTERNS:
                assert not re.search(pattern, text), f"{path.name} matches {pattern}"
