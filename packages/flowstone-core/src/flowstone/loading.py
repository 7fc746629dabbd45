"""Loading a pipeline from ``path/to/file.py:attr`` or ``package.module:attr``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flowstone.errors import UsageError

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = ["load_pipeline"]


def load_pipeline(spec: str) -> Pipeline:
    """Import the module or file named by ``spec`` and return its Pipeline attribute.

    ``spec`` is ``FILE.py:ATTR`` or ``MODULE:ATTR``; ``:ATTR`` defaults to ``pipeline``.
    A file is imported under a stable module name with its directory on ``sys.path``
    (as ``python FILE.py`` would), so it can import its sibling modules.
    """
    from flowstone.pipeline import Pipeline

    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(
            "expected FILE.py:PIPELINE or MODULE:PIPELINE, e.g. examples/etl.py:pipeline"
        )
    target, _, attr = spec.strip().rpartition(":") if ":" in spec else (spec.strip(), "", "")
    if not target or (len(target) == 1 and attr.startswith("\\")):  # a bare Windows drive
        target, attr = spec.strip(), ""
    attr = attr or "pipeline"
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"cannot import module {target!r} ({exc}); pass a file path like "
                "examples/quickstart.py:pipeline or a module importable from here"
            ) from exc
    obj = getattr(module, attr, None)
    if not isinstance(obj, Pipeline):
        found = sorted(k for k, v in vars(module).items() if isinstance(v, Pipeline))
        what = "nothing" if obj is None else f"a {type(obj).__name__}"
        raise UsageError(
            f"{target}:{attr} is {what}, not a flowstone Pipeline; "
            f"pipelines in that module: {', '.join(found) or 'none'}"
        )
    return obj


def _import_file(path: Path) -> object:
    path = path.expanduser()
    if not path.is_file():
        raise UsageError(f"pipeline file {str(path)!r} does not exist")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"flowstone_user_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    directory = str(resolved.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
