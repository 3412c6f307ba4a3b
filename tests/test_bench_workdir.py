"""The benchmarks' working directory (bench/workdir.py): gone after a run that went through, kept
after one that failed."""

from __future__ import annotations

import shutil

import pytest

from bench.workdir import working_dir


def test_a_run_that_went_through_leaves_nothing_behind() -> None:
    with working_dir("bench") as workdir:
        (workdir.path / "gateway-0.log").write_text("a line\n")
    assert not workdir.path.exists()


def test_a_run_that_raised_keeps_its_logs_and_names_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), working_dir("soak") as workdir:
        (workdir.path / "worker-0.log").write_text("what went wrong\n")
        raise RuntimeError("a service did not start")
    try:
        assert (workdir.path / "worker-0.log").read_text() == "what went wrong\n"
        assert str(workdir.path) in capsys.readouterr().err
    finally:
        shutil.rmtree(workdir.path)


def test_a_run_that_went_wrong_without_raising_keeps_its_logs_when_told() -> None:
    with working_dir("bench") as workdir:
        workdir.keep()  # e.g. requests that failed
    try:
        assert workdir.path.is_dir()
    finally:
        shutil.rmtree(workdir.path)
