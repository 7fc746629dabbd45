"""The execution engine shared by every executor: planning, running one step, resuming.

Executors call :meth:`StepRunner.run_step` for each ready step and dispatch the steps it
returns; nothing else is needed to run a pipeline on any transport.
"""

from flowstone.engine.runner import StepRunner

__all__ = ["StepRunner"]
