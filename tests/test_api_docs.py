"""docs/python-api.md: its Python example runs as written, and the commands it shows
accept what it wrote."""

import shlex
from pathlib import Path

from conftest import run_cli

PAGE = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def _blocks(language: str) -> list[str]:
    """The page's fenced code blocks in ``language``, in order."""
    blocks, current, fence = [], [], None
    for line in PAGE.read_text().splitlines():
        if fence is None and line.startswith("```"):
            fence, current = line[3:].strip(), []
        elif fence is not None and line.strip() == "```":
            if fence == language:
                blocks.append("\n".join(current) + "\n")
            fence = None
        elif fence is not None:
            current.append(line)
    return blocks


def test_the_documented_example_runs(tmp_path, monkeypatch):
    (code,) = _blocks("python")
    monkeypatch.chdir(tmp_path)  # artifacts (exported/) and results/ go here
    namespace: dict = {}
    exec(compile(code, str(PAGE), "exec"), namespace)
    assert namespace["path"] == Path("results") / "mobilenet_v3_small.json" and namespace["path"].exists()
    assert namespace["document"]["artifact"]["key"] == namespace["report"].artifact.key
    commands = [shlex.split(line) for block in _blocks("sh") for line in block.splitlines() if line.startswith("edgekit ")]
    assert [c[1] for c in commands] == ["report", "check"]
    for command in commands:
        proc = run_cli(*command[1:], cwd=tmp_path)
        assert proc.returncode == 0, f"{shlex.join(command)}: {proc.stderr}"
    assert (tmp_path / "report" / "report.csv").exists()
