"""Build a city briefing from three branches that run at the same time, then join them.

``briefing`` is a parallel asset: its branches (maps, news, weather) each end in a final
asset, run concurrently, and when the last one is done the join function runs exactly
once with ``branches={"maps": ..., "news": ..., "weather": ...}`` and ``input`` (the
values of its own dependencies). The mode is ``"partial"`` with maps and weather
required: a failed news feed still gives a briefing (the branch shows up as
``fs.BranchFailed``), a failed map or forecast fails it.

Partitions are city names (no partition set declared, so any key works)::

    python examples/parallel_join.py
    flowstone run examples/parallel_join.py:pipeline briefing --partition Lisbon
"""

import time
from typing import Any

import flowstone as fs

# Stand-ins for three external services; each call "takes" LATENCY seconds.
CITIES = {
    "Lisbon": {"lat": 38.72, "lon": -9.14, "country": "PT"},
    "Oslo": {"lat": 59.91, "lon": 10.75, "country": "NO"},
    "Reykjavik": {"lat": 64.15, "lon": -21.94, "country": "IS"},
}
HEADLINES = {
    "Lisbon": ["Tram 28 gets new cars", "Record tourist season"],
    "Oslo": ["Fjord ferries go electric"],
}
LATENCY = 0.05


@fs.asset
def city(context: fs.Context) -> dict[str, Any]:
    """The city of the run's partition, with its coordinates."""
    name = str(context.partition)
    if name not in CITIES:
        raise LookupError(f"unknown city {name!r}; known: {sorted(CITIES)}")
    return {"name": name, **CITIES[name]}


@fs.asset
def map_tiles(city: dict[str, Any]) -> list[str]:
    time.sleep(LATENCY)
    x, y = int((city["lon"] + 180) * 10), int((90 - city["lat"]) * 10)
    return [f"tile/{x + dx}/{y + dy}" for dx in (0, 1) for dy in (0, 1)]


@fs.asset
def generate_maps(map_tiles: list[str]) -> dict[str, Any]:
    """Final asset of the maps branch (a branch may be several assets long)."""
    return {"tiles": len(map_tiles), "url": f"https://maps.example/{map_tiles[0]}.png"}


@fs.asset
def front_pages(city: dict[str, Any]) -> list[str]:
    time.sleep(LATENCY)
    if city["name"] not in HEADLINES:
        raise ConnectionError(f"news feed has no edition for {city['name']}")
    return HEADLINES[city["name"]]


@fs.asset
def forecast(city: dict[str, Any]) -> dict[str, Any]:
    time.sleep(LATENCY)
    # A deterministic "forecast": colder further north.
    return {"high_c": round(30 - city["lat"] / 3, 1), "rain": city["lat"] > 55}


@fs.asset(
    deps=["city"],
    parallel=fs.Parallel(
        branches={"maps": "generate_maps", "news": "front_pages", "weather": "forecast"},
        mode="partial",
        required=["maps", "weather"],
    ),
)
def briefing(branches: dict[str, Any], input: dict[str, Any]) -> dict[str, Any]:
    """Join the branches; a missing news feed is reported, not fatal."""
    news = branches["news"]
    return {
        "city": input["city"]["name"],
        "map": branches["maps"]["url"],
        "forecast": branches["weather"],
        "headlines": [] if isinstance(news, fs.BranchFailed) else news,
        "news_error": news.error if isinstance(news, fs.BranchFailed) else None,
    }


pipeline = fs.Pipeline(
    "parallel_join", [city, map_tiles, generate_maps, front_pages, forecast, briefing]
)

if __name__ == "__main__":
    for name in CITIES:
        started = time.perf_counter()
        result = pipeline.run("briefing", partition=name, force=True)
        elapsed = time.perf_counter() - started
        b = result.value
        news = b["headlines"] or f"unavailable ({b['news_error']})"
        # A tolerated branch failure: the run succeeded (the briefing has a value) and
        # result.partial_failures names the branch that failed.
        print(f"{b['city']}: {b['forecast']['high_c']} C, rain={b['forecast']['rain']}, "
              f"map={b['map']}\n    news: {news}\n    run {result.status} in {elapsed:.2f}s "
              f"(three {LATENCY:.2f}s calls in parallel); "
              f"briefing {pipeline.status('briefing', name)}")
