"""How the assets and jobs show a table in the Dagster UI (one home for the markdown of a
frame, so every table reads the same: blanks for missing values, numbers to 8 digits)."""

import dagster as dg
import pandas as pd


def md_table(frame: pd.DataFrame, empty: str, rows: int | None = None) -> dg.MetadataValue:
    """`frame` as a markdown table (its first `rows`), or the sentence `empty` when it has no row."""
    if not len(frame):
        return dg.MetadataValue.md(empty)
    shown = frame if rows is None else frame.head(rows)
    shown = shown.astype(object).where(shown.notna(), "")
    return dg.MetadataValue.md(shown.to_markdown(index=False, floatfmt=".8g"))
