"""An IO manager that keeps each snapshot asset's latest value in `recon.asset_values`.

Local-filesystem pickles do not survive a multi-machine deployment; this stores DataFrames as
parquet bytes in the same Postgres, keyed by asset and partition, so any run on any machine reads
the same snapshot. Through two SQL functions (`recon_store_asset_value`, `recon_asset_value`), so
it works over either backend of the trading database; the bytes travel as base64.
"""


import base64
import io

import dagster as dg
import pandas as pd

from recon_assets.resources.database import TradingStore
from recon_assets.resources.guard import RunConfigGuard


class PostgresFrameIOManager(RunConfigGuard, dg.ConfigurableIOManager):
    """Stores pandas DataFrames (parquet) in recon.asset_values."""

    database: dg.ResourceDependency[TradingStore]

    @staticmethod
    def _keys(context: dg.OutputContext | dg.InputContext) -> tuple[str, str]:
        asset_key = context.asset_key.to_user_string()
        partition = context.partition_key if context.has_partition_key else ""
        return asset_key, partition

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        # Op results (e.g. a correction run's summary) are not datasets: their truth is in the
        # recon tables and their summary in the run's metadata, so nothing is stored.
        if obj is None or not context.has_asset_key:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a DataFrame, got {type(obj).__name__}")
        buffer = io.BytesIO()
        obj.to_parquet(buffer, index=False)
        asset_key, partition = self._keys(context)
        self.database.call("recon_store_asset_value", {
            "p_asset_key": asset_key, "p_partition_key": partition, "p_run_id": context.run_id,
            "p_payload_base64": base64.b64encode(buffer.getvalue()).decode("ascii")})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        asset_key, partition = self._keys(context)
        frame = load_stored_frame(self.database, asset_key, partition)
        if frame is None:
            raise FileNotFoundError(
                f"no stored value for {asset_key} partition {partition or '-'}: materialize it first")
        return frame


def load_stored_frame(database: TradingStore, asset_key: str, partition: str = "") -> pd.DataFrame | None:
    """The latest stored value of an asset partition, or None if it was never materialized."""
    payload = database.call("recon_asset_value", {"p_asset_key": asset_key,
                                                  "p_partition_key": partition})
    return None if payload is None else pd.read_parquet(io.BytesIO(base64.b64decode(payload)))
