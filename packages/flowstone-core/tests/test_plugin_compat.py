"""A plugin built for another flowstone-core is refused with the versions named."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from flowstone import __version__ as core_version
from flowstone._internal.versions import declared_requirement, satisfies
from flowstone.errors import PluginLoadError
from flowstone.registry import PluginRegistry


@pytest.mark.parametrize(
    ("version", "specifier", "expected"),
    [
        ("0.1.0", ">=0.1,<0.2", True),
        ("0.2.0", ">=0.1,<0.2", False),
        ("0.1.5", "~=0.1.2", True),
        ("0.2.0", "~=0.1.2", False),
        ("0.9", "~=0.1", True),
        ("1.0", "~=0.1", False),
        ("0.1.0", "==0.1.*", True),
        ("0.2.0", "==0.1.*", False),
        ("0.1.0", "!=0.1.0", False),
        ("0.1.0rc1", ">=0.1", True),
        ("0.1.0", "", True),
        ("0.1.0", "@ file:///somewhere", True),  # not a range this reads: never blocks
    ],
)
def test_satisfies_reads_the_ranges_distributions_declare(
    version: str, specifier: str, expected: bool
) -> None:
    assert satisfies(version, specifier) is expected


def test_declared_requirement_finds_the_core_among_requires_dist() -> None:
    requires = [
        "celery>=5.3",
        "Flowstone_Core (>=0.1,<0.2)",
        "flowstone-core>=9; extra == 'future'",
    ]
    assert declared_requirement(requires, "flowstone-core") == ">=0.1,<0.2"
    assert declared_requirement(["celery"], "flowstone-core") is None
    assert declared_requirement(None, "flowstone-core") is None


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Two installed plugin distributions: one for this core, one for a core yet to come."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    (root / "fscompat_plugins.py").write_text(
        "class Observer:\n    def on_event(self, event):\n        pass\n", encoding="utf-8"
    )
    for dist, name, core in (("acme-now", "now", ">=0.1,<0.2"), ("acme-later", "later", ">=9")):
        info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n"
            f"Requires-Dist: flowstone-core{core}\n",
            encoding="utf-8",
        )
        (info / "entry_points.txt").write_text(
            f"[flowstone.observers]\n{name} = fscompat_plugins:Observer\n", encoding="utf-8"
        )

    def entry_points(*, group: str) -> metadata.EntryPoints:
        return metadata.EntryPoints(
            point
            for dist in metadata.distributions(path=[str(root)])
            for point in dist.entry_points
            if point.group == group
        )

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    yield root
    sys.modules.pop("fscompat_plugins", None)


@pytest.mark.usefixtures("site")
def test_a_plugin_for_an_incompatible_core_is_refused_before_it_is_imported() -> None:
    registry = PluginRegistry()
    assert registry.create("flowstone.observers", "now") is not None  # compatible: loads
    sys.modules.pop("fscompat_plugins", None)
    with pytest.raises(PluginLoadError) as info:
        registry.load("flowstone.observers", "later")
    message = str(info.value)
    assert "acme-later" in message
    assert f"needs flowstone-core>=9, but flowstone-core {core_version} is installed" in message
    assert "pip install 'flowstone-core>=9'" in message
    assert "fscompat_plugins" not in sys.modules  # refused before importing anything of it


def test_every_plugin_in_the_repository_accepts_this_core() -> None:
    root = Path(__file__).resolve().parents[3]
    for pyproject in sorted((root / "plugins").glob("flowstone-*/pyproject.toml")):
        text = pyproject.read_text(encoding="utf-8")
        lines = [line.strip().strip('",') for line in text.splitlines()]
        wanted = declared_requirement(
            [line for line in lines if "flowstone-core" in line], "flowstone-core"
        )
        assert wanted, f"{pyproject.parent.name} declares no flowstone-core range"
        assert satisfies(core_version, wanted), (pyproject.parent.name, wanted)
