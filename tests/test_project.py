"""Promises of the project as a whole: light imports, the README's commands and files exist."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_loads_no_cuda_context_and_no_tensorflow():
    code = ("import sys, torch, weightsep, weightsep.cli, weightsep.pipeline; "
            "assert 'tensorflow' not in sys.modules; assert not torch.cuda.is_initialized(); print('ok')")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120).stdout.strip() == "ok"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    lines = (REPO / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    commands = [line.split("#")[0].strip() for line in lines]
    assert commands[0].startswith("./setup.sh && .venv/bin/python -m weightsep run")
    assert commands[1] == "./setup.sh --mcu && .venv/bin/python -m pytest -q"
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def test_files_the_readme_names_exist():
    text = (REPO / "README.md").read_text()
    for name in set(re.findall(r"`((?:[\w.]+/)*[\w]+\.(?:py|sh|md))", text)) - {"results/summary.md"}:  # written by run
        candidates = [REPO / name, REPO / "docs" / name, REPO / "weightsep" / name]
        assert any(p.exists() for p in candidates), name
