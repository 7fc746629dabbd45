"""The DESIGN §7 quickstart: three assets, one run.

Run it::

    python examples/quickstart.py
    flowstone run examples/quickstart.py:pipeline total

Values and run history go to the default store: SQLite under ``FLOWSTONE_HOME``
(``.flowstone/`` unless set), or ``FLOWSTONE_DATABASE_URL`` when that is set.
"""

import flowstone as fs


@fs.asset
def numbers() -> list[int]:
    return [1, 2, 3, 4, 5]


@fs.asset
def doubled(numbers: list[int]) -> list[int]:
    return [n * 2 for n in numbers]


@fs.asset
def total(context: fs.Context, doubled: list[int]) -> int:
    context.log.info("summing %d numbers", len(doubled))
    return sum(doubled)


pipeline = fs.Pipeline("quickstart", [numbers, doubled, total])

if __name__ == "__main__":
    result = pipeline.run("total")
    print(f"run {result.run_id}: {result.status}")
    print(f"total = {result.value}")
    print(pipeline.graph())
