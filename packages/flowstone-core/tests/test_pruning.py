"""``Pipeline.prune()``: values no record points at are pruned once older than
``value_retention`` (issue 11: "a losing attempt's value is an orphan that pruning
removes"), committed values and values an approval still points at are kept; schedule
ticks are pruned after a week (the ``ticks`` table was never pruned)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs
from flowstone.defaults.filesystem_io import FilesystemIOManager
from flowstone.protocols import StorageKey


def _assets() -> list[fs.AssetDef]:
    @fs.asset
    def orders() -> list[int]:
        return [1, 2, 3]

    @fs.asset
    def trade(orders: list[int]) -> Any:
        return fs.WaitForApproval(message="big", value=sum(orders), timeout=timedelta(days=9))

    return [orders, trade]


@pytest.mark.parametrize("io", ["sqlite", "filesystem"])
def test_prune_deletes_orphans_and_keeps_what_records_point_at(tmp_path: Path, io: str) -> None:
    managers: dict[str, Any] = {}
    if io == "filesystem":
        managers = {"default": FilesystemIOManager(tmp_path / "values")}
    p = fs.Pipeline(
        "pruned", _assets(), store=f"sqlite:///{tmp_path}/fs.db", io_managers=managers or None
    )
    try:
        run = p.run("trade")
        assert run.status == "waiting"
        manager = p.runtime.values.manager("default")
        committed = p.store.find_materialization("pruned", "orders", "", run_id=run.run_id)
        [approval] = p.approvals()
        assert committed is not None and committed.location and approval.location
        # a fenced-out attempt's value: written, never committed
        orphan = manager.store(StorageKey("pruned", "orders", "", run.run_id, attempt=7), [9])
        other = manager.store(StorageKey("elsewhere", "orders", "", "r-1", attempt=1), [8])
        later = datetime.now(UTC) + timedelta(days=2)
        assert p.prune(later) >= 1
        assert not manager.exists(orphan)
        assert manager.exists(committed.location) and manager.exists(approval.location)
        assert manager.exists(other)  # another pipeline's values are not this one's to prune
        assert p.get("orders") == [1, 2, 3]
        # each value is looked at once: the next pass within the hour does nothing
        again = manager.store(StorageKey("pruned", "orders", "", run.run_id, attempt=8), [7])
        assert p.prune(later + timedelta(minutes=5)) == 0 and manager.exists(again)
    finally:
        p.close()


def test_a_young_orphan_is_kept(tmp_path: Path) -> None:
    """A value younger than the retention may be a running step's, not yet committed."""
    p = fs.Pipeline("young", _assets(), store=f"sqlite:///{tmp_path}/fs.db")
    try:
        run = p.run("trade")
        manager = p.runtime.values.manager("default")
        fresh = manager.store(StorageKey("young", "orders", "", run.run_id, attempt=3), [1])
        assert p.prune() == 0 and manager.exists(fresh)
    finally:
        p.close()


def test_value_retention_is_validated() -> None:
    with pytest.raises(fs.UsageError, match="value_retention"):
        fs.Pipeline("bad", _assets(), store="memory://", value_retention="1 day")  # type: ignore[arg-type]


def test_prune_deletes_schedule_ticks_after_a_week_and_keeps_sensor_keys(tmp_path: Path) -> None:
    p = fs.Pipeline("ticking", _assets(), store=f"sqlite:///{tmp_path}/fs.db")
    try:
        schedule, sensor = "schedule:ticking:nightly", "sensor:ticking:arrivals"
        assert p.store.claim_tick(schedule, "2026-01-01T00:00:00+00:00")
        assert p.store.claim_tick(sensor, "orders-2026-01-01.csv")
        assert p.prune(datetime.now(UTC) + timedelta(days=1)) == 0  # younger than a week
        assert p.prune(datetime.now(UTC) + timedelta(days=8)) == 1
        assert p.store.claim_tick(schedule, "2026-01-01T00:00:00+00:00")  # pruned
        assert not p.store.claim_tick(sensor, "orders-2026-01-01.csv")  # still de-duplicates
    finally:
        p.close()
