"""Five small pipelines on one database (FLOWSTONE_DATABASE_URL), served by one worker."""

import flowstone as fs


def _pipeline(name: str) -> fs.Pipeline:
    @fs.asset
    def source() -> list[int]:
        return [1, 2, 3]

    @fs.asset
    def doubled(source: list[int]) -> list[int]:
        return [n * 2 for n in source]

    @fs.asset
    def total(doubled: list[int]) -> int:
        return sum(doubled)

    return fs.Pipeline(name, [source, doubled, total])


p1, p2, p3, p4, p5 = (_pipeline(f"it_shared_{i}") for i in range(1, 6))
