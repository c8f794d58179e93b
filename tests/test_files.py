"""files.source_commit: the commit a result records, in a git checkout, a changed one, and outside any;
and the writers of result JSON record it."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import timing
from weightsep import pipeline
from weightsep.files import source_commit

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="no git")


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


@needs_git
def test_the_commit_and_whether_tracked_files_changed_since(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "a")
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("not code")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}")
    git(tmp_path, "add", "results")
    git(tmp_path, "commit", "-q", "-m", "r")
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "results" / "r.json").write_text('{"a": 1}')  # what a run writes is not code
    assert source_commit(tmp_path) == {"sha": sha, "dirty": False}
    assert source_commit(tmp_path / "results") == {"sha": sha, "dirty": False}  # from a subfolder too
    (tmp_path / "a.py").write_text("2\n")
    assert source_commit(tmp_path / ".") == {"sha": sha, "dirty": True}


@needs_git
def test_none_outside_a_checkout_or_before_the_first_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert source_commit(tmp_path) is None
    git(tmp_path, "init", "-q")
    assert source_commit(tmp_path) is None


def test_none_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert source_commit() is None


def test_this_checkout_is_a_commit():
    commit = source_commit()
    assert commit is None or len(commit["sha"]) == 40


def test_the_result_writers_record_the_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(timing, "RESULTS_DIR", tmp_path)
    bench = json.loads(timing.write_result("b", {"rows": []}).read_text())
    summary = json.loads((Path(__file__).parent / "summary_fixtures" / "plain.json").read_text())
    pipeline.write_summary(summary, tmp_path)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert bench["commit"] == written["commit"] == source_commit()
