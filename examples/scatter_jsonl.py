"""Fan out over a JSON-lines file of crawled pages, 20 pages per batch, and gather an index.

``page_stats`` scatters over ``examples/data/pages.jsonl`` (200 pages) read by
``fs.readers.JsonLines``. With ``Batching(max_items=20)`` the function runs once per batch
(``context.batch.items``) and returns one result per page; at most ``max_concurrent``
batches are in flight. Dead pages (HTTP 404) are marked ``fs.ItemFailed`` — with
``on_item_error="collect"`` only that page fails, not its batch — and the asset fails only
if more than ``failure_threshold`` (5%) of the pages fail. ``gather`` turns the ordered
per-page results into the asset's value, which ``site_report`` consumes like any other.

::

    python examples/scatter_jsonl.py
    flowstone run examples/scatter_jsonl.py:pipeline site_report
"""

from collections import Counter
from pathlib import Path
from typing import Any

import flowstone as fs

PAGES = Path(__file__).resolve().parent / "data" / "pages.jsonl"
STOP_WORDS = frozenset(
    {"the", "a", "data", "run", "each", "with", "for", "every", "new", "fast", "team", "daily"}
)


def build_index(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Gather: one site index from the per-page results (failed pages arrive as None)."""
    ok = [r for r in results if r is not None]
    terms: Counter[str] = Counter()
    for r in ok:
        terms.update(r["terms"])
    return {
        "pages": len(ok),
        "failed": len(results) - len(ok),
        "words": sum(r["words"] for r in ok),
        "top_terms": [term for term, _ in terms.most_common(5)],
        "longest": max(ok, key=lambda r: r["words"])["url"] if ok else None,
    }


@fs.asset(
    scatter=fs.Scatter(
        reader=fs.readers.JsonLines(PAGES),
        batching=fs.Batching(max_items=20, on_item_error="collect"),
        max_concurrent=4,
        failure_threshold=0.05,
        gather=build_index,
    )
)
def page_stats(context: fs.Context) -> list[dict[str, Any] | fs.ItemFailed]:
    """Word counts and terms for each page of the batch."""
    assert context.batch is not None  # a batched scatter always has one
    out: list[dict[str, Any] | fs.ItemFailed] = []
    for page in context.batch.items:
        if page["status"] != 200:
            out.append(fs.ItemFailed(f"{page['url']} returned HTTP {page['status']}"))
            continue
        words = page["text"].split()
        out.append({
            "url": page["url"],
            "words": len(words),
            "terms": [w for w in words if w not in STOP_WORDS],
        })
    return out


@fs.asset
def site_report(page_stats: dict[str, Any]) -> str:
    """A one-paragraph summary of the crawl."""
    return (
        f"{page_stats['pages']} pages indexed ({page_stats['failed']} failed), "
        f"{page_stats['words']} words; top terms: {', '.join(page_stats['top_terms'])}; "
        f"longest page: {page_stats['longest']}"
    )


pipeline = fs.Pipeline("scatter_jsonl", [page_stats, site_report])

if __name__ == "__main__":
    result = pipeline.run("site_report", force=True)
    print(f"run {result.run_id}: {result.status}")
    print(result.value)
