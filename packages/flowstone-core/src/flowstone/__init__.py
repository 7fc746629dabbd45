"""FlowStone: asset-first data orchestration."""

from flowstone._version import __version__

__all__ = ["__version__"]
