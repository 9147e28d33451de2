"""Progress outside a terminal: plain lines at least every interval (a heartbeat when the work
is slower), with count, rate, elapsed time and ETA; tile and volume use them."""

from __future__ import annotations

import io
import re
import time

import pytest
from helpers import TEST_DATA

from densekit.errors import DensekitError
from densekit.progress import PlainProgress, clock, interval_seconds, progress_bar

LEGACY = TEST_DATA / "checkpoints_v0"


def test_lines_with_count_rate_and_eta(monkeypatch):
    monkeypatch.setenv("DENSEKIT_PROGRESS_SECONDS", "0.000001")
    stream = io.StringIO()
    with PlainProgress(4, "a.tif", unit="tile", prefix="densekit tile: ", stream=stream) as bar:
        for _ in range(4):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(
        r"densekit tile: a.tif 1/4 tiles \(25%\), [\d.e+]+ tiles/s, elapsed 0:00:00, ETA 0:00:0\d",
        lines[0],
    ), lines[0]
    assert lines[-1].startswith("densekit tile: a.tif 4/4 tiles (100%)")


def test_a_heartbeat_when_the_work_is_slower_than_the_interval(monkeypatch):
    monkeypatch.setenv("DENSEKIT_PROGRESS_SECONDS", "0.1")
    stream = io.StringIO()
    with PlainProgress(10, "x", stream=stream) as bar:
        bar.update(1)
        time.sleep(0.45)  # one slow step: no update for four intervals
    assert len(stream.getvalue().splitlines()) >= 3, stream.getvalue()


def test_bad_interval_and_clock():
    assert clock(3725.2) == "1:02:05" and clock(float("inf")) == "?"
    with pytest.MonkeyPatch.context() as m:
        m.delenv("DENSEKIT_PROGRESS_SECONDS", raising=False)
        assert interval_seconds() == 20  # a log under nohup gets a line at least every 30 s
        m.setenv("DENSEKIT_PROGRESS_SECONDS", "soon")
        with pytest.raises(DensekitError, match="DENSEKIT_PROGRESS_SECONDS='soon': give a numb"):
            interval_seconds()


def test_outside_a_terminal_the_bar_is_plain_lines():
    bar = progress_bar(3, "x")  # pytest's captured stdout is not a terminal
    assert isinstance(bar, PlainProgress)
    bar.close()
    assert progress_bar(3, "x", disable=True) is None


def tile_argv(tmp_path) -> list[str]:
    return ["tile", "--checkpoint", str(LEGACY / "seg_linear.ckpt"), "--input",
            str(LEGACY / "inputs" / "a.tif"), "--output", str(tmp_path / "o.tif"),
            "--tile", "56", "--overlap", "8", "--batch-size", "1"]  # fmt: skip


def test_tile_shows_plain_progress_lines(tmp_path, capfd, monkeypatch):
    from densekit.cli import main

    monkeypatch.setenv("DENSEKIT_PROGRESS_SECONDS", "0.000001")
    assert main(tile_argv(tmp_path)) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("densekit tile: a.tif ")]
    assert lines and "ETA" in lines[0] and "(100%)" in lines[-1], err


def test_ctrl_c_in_tile_keeps_the_strips_and_says_how_to_go_on(tmp_path, capfd, monkeypatch):
    from densekit.cli import main
    from densekit.inference import tiles

    real = tiles.progress_bar

    class Interrupting:
        """Counts as the bar does; Ctrl-C after 6 tiles (two strips of 3 done)."""

        def __init__(self, *args, **kwargs):
            self.bar = real(*args, **kwargs)
            self.n = 0

        def update(self, n):
            self.n += n
            if self.n >= 6:
                raise KeyboardInterrupt

        def close(self):
            self.bar.close()

    monkeypatch.setattr(tiles, "progress_bar", Interrupting)
    argv = tile_argv(tmp_path)
    assert main(argv) == 130
    line = capfd.readouterr().err.strip().splitlines()[-1]
    resume = " ".join(["densekit", *argv, "--resume"])
    assert line == (
        "densekit tile: interrupted; the finished strips are kept in the output's .partial "
        f"folder; go on with: {resume}"
    )
    assert (tmp_path / "o.tif.partial").is_dir()
    monkeypatch.setattr(tiles, "progress_bar", real)
    assert main([*argv, "--resume", "--no-progress"]) == 0
    assert (tmp_path / "o.tif").is_file() and not (tmp_path / "o.tif.partial").exists()
