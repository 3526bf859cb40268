"""titra-node's process settings: the event loop it runs on and its garbage-collector thresholds."""

import asyncio
import gc
import logging
import sys
from collections.abc import Iterator

import pytest
import uvloop

from cluster.limits import PROCESS_DEFAULTS
from node.cli import build_parser
from node.server import loop_factory, tune_gc


def test_uvloop_is_the_default_event_loop() -> None:
    args = build_parser().parse_args(["serve", "--node-id", "n1", "--data-dir", "d"])
    assert args.event_loop == PROCESS_DEFAULTS.event_loop == "uvloop"
    factory = loop_factory(args.event_loop)
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_asks_for_the_standard_loop() -> None:
    assert loop_factory("asyncio") is None  # asyncio.Runner's own default


def test_an_unknown_event_loop_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--node-id", "n1", "--data-dir", "d", "--event-loop", "tokio"])
    assert exit_info.value.code == 2
    assert "--event-loop" in capsys.readouterr().err


def test_without_uvloop_the_node_falls_back_to_asyncio_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    with caplog.at_level(logging.WARNING, logger="titra.node"):
        assert loop_factory("uvloop") is None
    assert "uvloop is not installed" in caplog.text


@pytest.fixture
def saved_gc_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@pytest.mark.usefixtures("saved_gc_thresholds")
def test_tune_gc_sets_the_documented_thresholds() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (
        PROCESS_DEFAULTS.gc_young_allocations_count,
        PROCESS_DEFAULTS.gc_middle_per_young_count,
        PROCESS_DEFAULTS.gc_old_per_middle_count,
    )


def test_a_runner_on_the_default_factory_runs_coroutines_on_uvloop() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
        assert runner.run(which()).startswith("uvloop")
