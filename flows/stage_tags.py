"""Stage tags on flow runs, never on task runs.

Each stage's flow run is tagged with its stage (`crucible`, `ingest`, ...), so the UI and the API filter
runs by stage, as deployment runs are tagged in prefect.yaml. Task runs carry no tags: before a tagged
task run starts, Prefect asks the server for a concurrency lease on each of its tags, a blocking call that
a busy SQLite server answers in seconds; on the demo that was half of an unchanged rerun's time. Task runs
are named after what they process instead.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from prefect import tags
from prefect.context import TagsContext

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def stage_tags(stage: str) -> Iterator[None]:
    """Tag the flow runs started inside with the stage (wrap the call of a stage's flow)."""
    with tags("crucible", stage):
        yield


def untagged_tasks(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a flow's body without the tags its caller set, so the task runs it starts carry none.

    Goes under `@flow`: the flow run itself was created with the caller's tags.
    """
    clear = TagsContext  # a closure variable: the body below runs with fn's module globals

    def body(*args: P.args, **kwargs: P.kwargs) -> R:
        with clear(current_tags=set()):
            return fn(*args, **kwargs)

    # Prefect resolves a flow's annotations (strings, under `from __future__ import annotations`) in the
    # function's globals, so the wrapper gets those of the flow's own module.
    wrapper = types.FunctionType(body.__code__, fn.__globals__, fn.__name__, None, body.__closure__)
    return functools.wraps(fn)(wrapper)
