"""The registry client's tables print what the registry holds, never what a terminal would act on: a name or
description with escape sequences or line breaks is one inert line, and a long one is cut."""

from __future__ import annotations

from modelplane.cli.registry_tables import MAX_CELL_CHARS, model_columns, table


def test_cells_are_one_inert_line_and_bounded() -> None:
    hostile = {"id": "m1", "name": "red\x1b[31m\nnext line\x07", "description": "d" * (MAX_CELL_CHARS * 3)}
    printed = table([hostile], model_columns(None))
    assert "\x1b" not in printed
    assert "\x07" not in printed
    assert len(printed.splitlines()) == 2  # the header and the one row
    assert all(len(cell) <= MAX_CELL_CHARS for cell in printed.splitlines()[1].split("  ") if cell)
