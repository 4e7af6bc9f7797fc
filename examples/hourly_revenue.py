"""Revenue and shoppers per hour and event type, over the demo's web events.

Run ``arrowflow demo`` first (it writes ``arrowflow-demo/data``), then::

    arrowflow run examples/hourly_revenue.py
    arrowflow run examples/hourly_revenue.py:flow --workers 2

or ``python examples/hourly_revenue.py``. ``ARROWFLOW_DEMO_DIR`` points it at another folder.
"""

import os

import polars as pl

import arrowflow as af

DEMO_DIR = os.environ.get("ARROWFLOW_DEMO_DIR", "arrowflow-demo")

flow = af.Flow("hourly-revenue")
events = flow.read_parquet(f"{DEMO_DIR}/data/web/*.parquet")
hourly = (
    events.filter(pl.col("event_type").is_in(["add_to_cart", "purchase"]))
    .with_columns(hour=pl.col("ts").dt.truncate("1h"))
    .key_by("hour", "event_type")
    .agg(events=pl.len(), amount=pl.col("amount").sum(), biggest=pl.col("amount").max())
)
hourly.write_parquet(f"{DEMO_DIR}/out/hourly_revenue")

if __name__ == "__main__":
    print(flow.run())
    print(
        pl.read_parquet(f"{DEMO_DIR}/out/hourly_revenue/*.parquet")
        .sort("hour", "event_type")
        .head(6)
    )
