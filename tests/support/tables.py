"""Reading Dagster table metadata (what ``assets.common.md_table`` makes) back in tests."""

import dagster as dg


def table_rows(table: dg.TableMetadataValue) -> dict[str, list[str]]:
    """A table's rows by their first cell, every cell as the text a reader sees ("" for a missing one)."""
    assert isinstance(table, dg.TableMetadataValue), f"not a table: {table!r}"
    rows = [["" if cell is None else str(cell) for cell in record.data.values()] for record in table.records]
    return {row[0]: row[1:] for row in rows}
