"""Three branches joined on Celery workers; the partition steers what goes wrong.

Partitions (no partition set, any key works):
  ``ok-*``          every branch succeeds;
  ``fail-news-*``   the optional ``news`` branch fails;
  ``fail-weather-*`` the required ``weather`` branch fails;
  ``kill-*``        ``maps`` writes ``$FLOWSTONE_IT_DIR/<run_id>.<attempt>.maps`` and sleeps,
                    so a test can SIGKILL the worker running it;
  ``stuck-*``       ``news`` sleeps past its branch timeout.
Every join execution leaves ``$FLOWSTONE_IT_DIR/<run_id>.<asset>.join.<uuid>``, so a test
counts how often a join function really ran.
"""

import os
import time
import uuid
from pathlib import Path
from typing import Any

import flowstone as fs


def _dir() -> Path:
    return Path(os.environ["FLOWSTONE_IT_DIR"])


def joined(context: fs.Context) -> None:
    (_dir() / f"{context.run_id}.{context.asset}.join.{uuid.uuid4().hex}").touch()


def join_count(run_id: str, asset: str) -> int:
    return len(list(_dir().glob(f"{run_id}.{asset}.join.*")))


@fs.asset
def city(context: fs.Context) -> str:
    return str(context.partition)


@fs.asset
def generate_maps(context: fs.Context, city: str) -> str:
    if city.startswith("kill-"):
        (_dir() / f"{context.run_id}.{context.attempt}.maps").write_text(str(os.getpid()))
        time.sleep(3)
    return f"map of {city}"


@fs.asset
def front_pages(city: str) -> list[str]:
    if city.startswith("fail-news"):
        raise ConnectionError(f"news feed has no edition for {city}")
    if city.startswith("stuck-"):
        time.sleep(4)
    return [f"headline in {city}"]


@fs.asset
def forecast(city: str) -> dict[str, Any]:
    if city.startswith("fail-weather"):
        raise ConnectionError(f"no forecast for {city}")
    return {"city": city, "high_c": 21}


BRANCHES = {"maps": "generate_maps", "news": "front_pages", "weather": "forecast"}


@fs.asset(deps=["city"], parallel=fs.Parallel(
    branches=BRANCHES, mode="partial", required=["maps", "weather"],
    branch_timeout={"news": 1.0}))
def briefing(context: fs.Context, branches: dict[str, Any]) -> dict[str, Any]:
    """Partial mode: a failed (or timed-out) news branch reaches the join as a marker."""
    joined(context)
    news = branches["news"]
    return {
        "maps": branches["maps"],
        "weather": branches["weather"],
        "news": news if isinstance(news, list) else f"{type(news).__name__}: "
        + getattr(news, "error", getattr(news, "reason", "")),
    }


@fs.asset(parallel=fs.Parallel(branches=BRANCHES))
def strict_briefing(context: fs.Context, branches: dict[str, Any]) -> list[str]:
    """all_or_nothing: any failed branch fails the join."""
    joined(context)
    return sorted(branches)


pipeline = fs.Pipeline(
    "it_parallel",
    [city, generate_maps, front_pages, forecast, briefing, strict_briefing],
)
