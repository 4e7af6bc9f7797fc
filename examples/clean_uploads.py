"""Convert the demo's mobile NDJSON uploads to Parquet; quarantine the lines that don't parse.

Run ``arrowflow demo`` first, then ``arrowflow run examples/clean_uploads.py``.
The clean rows land in ``arrowflow-demo/out/uploads_clean`` (Parquet), every broken line in
``arrowflow-demo/out/uploads_quarantine`` (NDJSON, with its file, byte offset, line and reason).
"""

import os

import polars as pl

import arrowflow as af

DEMO_DIR = os.environ.get("ARROWFLOW_DEMO_DIR", "arrowflow-demo")
SCHEMA = {
    "ts": pl.Datetime("ms"),
    "user_id": pl.Int64,
    "event_type": pl.String,
    "amount": pl.Float64,
}

flow = af.Flow("clean-uploads")
uploads = flow.read_ndjson(f"{DEMO_DIR}/data/mobile/*.ndjson", schema=SCHEMA)
uploads.with_columns(amount=pl.col("amount").round(2)).write_parquet(
    f"{DEMO_DIR}/out/uploads_clean"
)
uploads.side_output("malformed").write_ndjson(f"{DEMO_DIR}/out/uploads_quarantine")

if __name__ == "__main__":
    print(flow.run())
