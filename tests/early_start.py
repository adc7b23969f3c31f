"""Child servers this run will need, started in the background from the first test on and
handed to the tests that use them already running.

Each `python -m app` child spends 4-5 s of one core starting (importing torch alone takes
2.6 s, then the model is loaded and warmed up), while the test process, which pins torch to
one thread, keeps only one of this machine's two cores busy. Started here, those seconds run
on the other core during earlier tests instead of in the setup of the test that uses the
child. One child starts at a time, and at a low priority (nice 10) until a test takes it, so
that starting children only ever uses a core the tests leave idle.

A test module registers a child with `@early_start()`: a function of the fixture request
returning the context manager that starts the child without waiting for it (`wait=False`)
and stops it on exit. The decorator turns it into a fixture of the same name. The session
fixture `early_starts` (tests/conftest.py) starts, in the order in which the run first uses
them, the children that the collected tests require, directly or through other fixtures. A
child that was not started early is started when its fixture is set up, so a test sees the
same child either way.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest

BACKGROUND_NICENESS = 10


class Starting(Protocol):
    """What a start's context manager yields: a child that may still be starting."""

    @property
    def process(self) -> subprocess.Popen[bytes]: ...

    def wait_until_ready(self) -> None: ...


Start = Callable[[pytest.FixtureRequest], AbstractContextManager[Starting]]
Scope = Literal["function", "module", "session"]
_STARTS: dict[str, Start] = {}


def early_start(scope: Scope = "function") -> Callable[[Start], Any]:
    """Register a child and make it a fixture. The start function runs on the session's
    request when the child starts early, so it may only use session-scoped fixtures."""

    def register(start: Start) -> Any:
        name = start.__name__
        _STARTS[name] = start

        @pytest.fixture(name=name, scope=scope)
        def ready_child(request: pytest.FixtureRequest, early_starts: EarlyStarts) -> Iterator[Any]:
            with early_starts.take(name, request) as child:
                yield child

        return ready_child

    return register


def first_uses(items: list[pytest.Item]) -> list[str]:
    """The registered children these tests require, in the order the run reaches them."""
    order: dict[str, None] = {}
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            if name in _STARTS:
                order.setdefault(name)
    return list(order)


@dataclass
class _Child:
    stack: ExitStack = field(default_factory=ExitStack)
    settled: threading.Event = field(default_factory=threading.Event)
    value: Starting | None = None
    error: BaseException | None = None


class EarlyStarts:
    def __init__(self) -> None:
        self._children: dict[str, _Child] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, names: list[str], request: pytest.FixtureRequest) -> None:
        """Start `names` in order on a background thread, each once the one before is ready.
        The start functions run here: fixture lookups belong to the test thread."""
        self._children = {name: _Child() for name in names}
        planned = [(name, _STARTS[name](request), self._children[name]) for name in names]
        self._thread = threading.Thread(target=self._start_in_turn, args=(planned,), daemon=True)
        self._thread.start()

    def _start_in_turn(
        self, planned: list[tuple[str, AbstractContextManager[Starting], _Child]]
    ) -> None:
        # The test thread may take a child (pop it from _children) before its turn here.
        for name, manager, child in planned:
            try:
                if self._stopping.is_set():
                    raise RuntimeError(f"{name}: not started, the session is ending")
                child.value = child.stack.enter_context(manager)
                _set_niceness(child.value.process.pid, BACKGROUND_NICENESS)
                child.value.wait_until_ready()
            except BaseException as error:  # handed to the test that takes this child
                child.error = error
            finally:
                child.settled.set()

    @contextmanager
    def take(self, name: str, request: pytest.FixtureRequest) -> Iterator[Starting]:
        """The child, ready; stopped when the taking fixture ends."""
        child = self._children.pop(name, None)
        if child is None:  # not started early (a fixture requested at run time)
            with _STARTS[name](request) as value:
                value.wait_until_ready()
                yield value
            return
        with child.stack:
            child.settled.wait()
            if child.error is not None:
                raise child.error
            assert child.value is not None
            # Taken: from now on it competes as the test's own server would.
            _set_niceness(child.value.process.pid, 0)
            yield child.value

    def close(self) -> None:
        """Stop the children no test took (a run cut short, a deselected test)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        for child in self._children.values():
            child.stack.close()


def _set_niceness(pid: int, niceness: int) -> None:
    """Of the process and its descendants (a multi-worker server's workers). Raising the
    priority back needs root (CI runs as root); elsewhere the child keeps the low one."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError:
        return  # exited, or not allowed
    for child in children:
        _set_niceness(int(child), niceness)
