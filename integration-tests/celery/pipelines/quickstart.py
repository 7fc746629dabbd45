"""The quickstart, unchanged: three assets, no executor or store named in the code."""

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


pipeline = fs.Pipeline("it_quickstart", [numbers, doubled, total])
