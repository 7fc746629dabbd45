"""The execution engine shared by every executor: planning, running one step, resuming.

Executors call :func:`run_chain` (or :meth:`StepRunner.run`) for each ready step and
dispatch the steps it leaves; nothing else is needed to run a pipeline on any transport.

This module's ``__all__`` is the engine API plugins may use (pinned by a test, like the
root ``flowstone.__all__``); everything in the submodules is internal and may change.
"""

from flowstone.engine.ahead import ClaimedAhead
from flowstone.engine.batch import FinishBatch, Watch
from flowstone.engine.chain import release_step, run_chain
from flowstone.engine.inputs import DepOutcome, Inputs, resolve_inputs
from flowstone.engine.invoke import bind_arguments, call_with_timeout
from flowstone.engine.requests import ParallelRequest, ScatterRequest
from flowstone.engine.resume import complete_deferred
from flowstone.engine.runner import StepResult, StepRunner, describe_error
from flowstone.engine.values import StoredValue, ValueLayer
from flowstone.runtime import Capabilities, Policies, Runtime
from flowstone.scatter import item_key

__all__ = [
    "Capabilities",
    "ClaimedAhead",
    "DepOutcome",
    "FinishBatch",
    "Inputs",
    "ParallelRequest",
    "Policies",
    "Runtime",
    "ScatterRequest",
    "StepResult",
    "StepRunner",
    "StoredValue",
    "ValueLayer",
    "Watch",
    "bind_arguments",
    "call_with_timeout",
    "complete_deferred",
    "describe_error",
    "item_key",
    "release_step",
    "resolve_inputs",
    "run_chain",
]
