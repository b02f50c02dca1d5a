#!/usr/bin/env python3
"""Checks a `strata export` directory with two independent readers, pyarrow and DuckDB.

    check_export.py EXPORT_DIR EXPECTED_JSON

EXPECTED_JSON maps hex(key) -> {"value": hex, "version": int or null (any), "deleted": bool (optional),
"expires_at": int ms or null (optional), "expires_between": [lo, hi] ms (optional)}. Both readers must see exactly those rows: no key
missing, none extra, every value and version equal. Exits 1 with the differences otherwise.
"""
import json
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


def fail(msg):
    print(f"check_export: {msg}", file=sys.stderr)
    sys.exit(1)


def compare(reader, got, want):
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    # A version of None in the expectations means "any version".
    wrong = [
        k
        for k in want
        if k in got
        and (got[k][0], got[k][2]) != (want[k][0], want[k][2])
        or (k in got and want[k][1] is not None and got[k][1] != want[k][1])
    ]
    if missing or extra or wrong:
        fail(
            f"{reader}: {len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra "
            f"(e.g. {extra[:3]}), {len(wrong)} wrong (e.g. "
            f"{[(k, got[k], want[k]) for k in wrong[:3]]})"
        )


def main():
    export_dir, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        want_full = json.load(f)
    with open(os.path.join(export_dir, "_manifest.json")) as f:
        manifest = json.load(f)
    files = [os.path.join(export_dir, os.path.basename(x["path"])) for x in manifest["files"]]
    if manifest["rows"] != len(want_full):
        fail(f"_manifest.json says {manifest['rows']} rows, expected {len(want_full)}")
    want = {k: (v["value"], v["version"], v.get("deleted", False)) for k, v in want_full.items()}

    # pyarrow: schema, per-file key order, row counts, contents.
    expected_types = {
        "key": pa.binary(),
        "value": pa.binary(),
        "version": pa.uint64(),
        "expires_at": pa.timestamp("ms", tz="UTC"),
        "partition": pa.uint32(),
        "deleted": pa.bool_(),
    }
    got = {}
    for path, meta in zip(files, manifest["files"]):
        t = pq.read_table(path)
        for name, typ in expected_types.items():
            if name not in t.schema.names:
                fail(f"{path}: no column {name}")
            if t.schema.field(name).type != typ:
                fail(f"{path}: column {name} is {t.schema.field(name).type}, expected {typ}")
        if t.num_rows != meta["rows"]:
            fail(f"{path}: {t.num_rows} rows, _manifest.json says {meta['rows']}")
        keys = t.column("key").to_pylist()
        if keys != sorted(keys):
            fail(f"{path}: rows are not sorted by key")
        for row in t.to_pylist():
            k = row["key"].hex()
            if k in got:
                fail(f"pyarrow: key {k} appears twice")
            got[k] = (row["value"].hex(), row["version"], row["deleted"])
            exp = want_full.get(k, {})
            ts = row["expires_at"]
            ms = None if ts is None else int(ts.timestamp() * 1000)
            if "expires_at" in exp and ms != exp["expires_at"]:
                fail(f"pyarrow: key {k} expires_at {ms}, expected {exp['expires_at']}")
            if "expires_between" in exp:
                lo, hi = exp["expires_between"]
                if ms is None or not lo <= ms <= hi:
                    fail(f"pyarrow: key {k} expires_at {ms}, expected within [{lo}, {hi}]")
    compare("pyarrow", got, want)

    # DuckDB: an independent Parquet reader over the same files.
    con = duckdb.connect()
    rows = con.execute(
        "SELECT hex(key), hex(value), version, deleted FROM read_parquet(?)", [files]
    ).fetchall()
    got = {}
    for k, v, ver, deleted in rows:
        k, v = k.lower(), v.lower()
        if k in got:
            fail(f"duckdb: key {k} appears twice")
        got[k] = (v, ver, deleted)
    compare("duckdb", got, want)
    n = con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()[0]
    if n != len(want):
        fail(f"duckdb: count(*) = {n}, expected {len(want)}")
    print(f"check_export: {len(want)} rows match (pyarrow {pa.__version__}, duckdb {duckdb.__version__})")


if __name__ == "__main__":
    main()
