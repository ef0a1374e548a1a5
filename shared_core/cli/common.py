"""What every command shares: exit codes and progress bars."""

from __future__ import annotations

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def tqdm_factory(enabled: bool, unit: str):
    """A `progress_factory(total)` as the core takes it: each call draws a new tqdm bar and returns its `update`."""
    from tqdm.auto import tqdm

    def factory(total: int):
        bar = tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True)
        return bar.update

    return factory


def counting_progress(enabled: bool, unit: str):
    """A `progress(done, total)` callback drawing a tqdm bar created on the first call; the total may grow."""
    from tqdm.auto import tqdm

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True)
        if total != bar.total:
            bar.total = total
        bar.update(done - bar.n)

    return progress
