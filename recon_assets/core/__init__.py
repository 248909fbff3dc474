"""Pure decision logic: plain Python and pandas, no Dagster import (a test enforces it)."""
