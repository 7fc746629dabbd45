"""A pipeline the CLI tests load (``simple.py:pipeline``); its store is
``FLOWSTONE_DATABASE_URL`` (the tests point it at a SQLite file)."""

import flowstone as fs


@fs.asset
def numbers() -> list[int]:
    return [1, 2, 3]


@fs.asset
def total(numbers: list[int]) -> int:
    return sum(numbers)


pipeline = fs.Pipeline("simple", [numbers, total])
