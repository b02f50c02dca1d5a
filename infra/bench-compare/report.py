#!/usr/bin/env python3
"""Side-by-side report of an `infra/bench-compare.sh OUT` run (issue 13).

Usage:
    python3 infra/bench-compare/report.py OUT [--no-plots]

Reads   OUT/json/<store>/<system>/<workload>.json
          store    local | s3
          system   strata-embedded | strata-grpc | slatedb-1ms | slatedb-100ms | floor
          workload put-1, put-64, get-1, get-uniform-64, ..., ycsb-f; for floor: store-put-1,
                   store-put-64, store-get-1, store-get-64, ping-1, ping-64
        Each file is a `strata bench --json` report (the SlateDB peer writes the same shape):
          {"config": {"clients": N, ...}, "elapsed_s": s,
           "total": {"ops", "ops_per_s", "errors", "scanned_keys_per_s", ...},
           "ops": {"<kind>": {"count", "ops_per_s", "latency_us": {"p50", "p99", "p999", "max", ...}
                              or null, "curve_us": [[quantile, us], ...]}, ...},
           "rss": {"peak_bytes", "samples": [[ms, bytes], ...], "cpu_s"}        (optional)
           "timeline": [[ms since start, requests in the interval], ...]        (optional)
           "store_requests": {"puts", "gets", "heads", "lists", "gets_per_op", ...} (optional)}
        Missing files (failed or skipped runs) show as "-".
Writes  OUT/compare.txt   the text report (markdown tables), also printed to stdout
        OUT/compare.json  {"rows": [...], "targets": [...], "cost": [...]}
        OUT/plots/*.png   latency curves, throughput over time, server RSS, summary bars
                          (skipped with --no-plots or when matplotlib is not installed)
"""

import json
import math
import os
import sys
from pathlib import Path

SYSTEMS = ["strata-embedded", "strata-grpc", "slatedb-1ms", "slatedb-100ms"]
SHORT = {"strata-embedded": "emb", "strata-grpc": "grpc", "slatedb-1ms": "sdb-1ms",
         "slatedb-100ms": "sdb-100ms"}
RATIOS = [("strata-embedded", "slatedb-1ms"), ("strata-grpc", "slatedb-1ms"),
          ("strata-grpc", "slatedb-100ms")]
WORKLOAD_ORDER = ["put-1", "put-64", "get-1", "get-uniform-64", "get-zipfian-64", "get-cold-16",
                  "scan-8", "batch-16", "mix-16"] + [f"ycsb-{c}" for c in "abcdef"]
MiB = 1 << 20
RSS_LIMIT_MIB = 512 + 256      # server memory budget + slack
PUT_USD, GET_USD = 0.005 / 1000, 0.0004 / 1000   # S3 list prices per request
PER_CORE_READS, PER_CORE_WRITES = 3100, 1600     # the scale sheet's per-core share
CPU_US_READ, CPU_US_WRITE = 100, 500

LEGEND = """Every ratio is "how many times better Strata is" (>1 = Strata better): throughput
strata/peer, latency, RSS and CPU peer/strata. Against a floor the same convention gives the
fraction of the floor reached (<= 1 expected). Latencies in µs of the workload's main op kind
(put for put-* and mix-16, get for get-* and ycsb-a..d, scan for scan-* and ycsb-e,
read_modify_write for ycsb-f, batch_get for batch-16).
Floors: store floor = raw store PUT/GET (floor/store-put-N, store-get-N; N = 1 for one client,
else 64) for strata-embedded; ping floor = empty gRPC round trip (floor/ping-1 or ping-64) for
strata-grpc. RSS/CPU: for strata-grpc the sampled process is the server alone; for
strata-embedded and slatedb it is the bench process itself, load generator included.
"-" = run missing or figure not applicable."""


def load(out):
    """{store: {system: {workload: report}}} of every readable JSON file."""
    data = {}
    for f in sorted((out / "json").glob("*/*/*.json")):
        store, system, workload = f.parts[-3], f.parts[-2], f.stem
        try:
            data.setdefault(store, {}).setdefault(system, {})[workload] = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            print(f"note: skipping {f}: {e}", file=sys.stderr)
    return data


def get(d, *path):
    """d[p0][p1]...; None when any step is missing or null."""
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def main_kind(workload, report):
    """The op kind the workload's latency figures describe."""
    for prefix, kind in (("put-", "put"), ("get-", "get"), ("scan-", "scan")):
        if workload.startswith(prefix):
            return kind
    # Fixed per workload, so every system's figure describes the same kind (a 50/50 mix
    # would otherwise pick a different kind per system by a coin flip).
    fixed = {
        "batch-16": "batch_get", "mix-16": "put", "ycsb-a": "get", "ycsb-b": "get",
        "ycsb-c": "get", "ycsb-d": "get", "ycsb-e": "scan", "ycsb-f": "read_modify_write",
    }
    if workload in fixed:
        return fixed[workload]
    ops = (report or {}).get("ops") or {}
    return max(ops, key=lambda k: ops[k].get("count") or 0) if ops else None


def latency(report, workload, pct):
    if report is None:
        return None
    return get(report, "ops", main_kind(workload, report), "latency_us", pct)


def peak_mib(report):
    b = get(report, "rss", "peak_bytes")
    return b / MiB if b is not None else None


def cpu_us_per_op(report):
    cpu, ops = get(report, "rss", "cpu_s"), get(report, "total", "ops")
    return cpu * 1e6 / ops if cpu is not None and ops else None


def clients(workload, report):
    c = get(report, "config", "clients")
    if c is None:
        try:
            c = int(workload.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            c = None
    return c


def fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "x":
        return f"{v:.2f}×" if v < 100 else f"{v:.0f}×"
    if unit == "$":
        return f"${v:.4f}"
    if isinstance(v, int) or abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"


def ratio(a, b, higher_better):
    if a is None or b is None or a == 0 or b == 0:
        return None
    return a / b if higher_better else b / a


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# Figures: (name, unit, getter(workload, report), higher_is_better, compared to floors).
FIGURES = [
    ("ops/s", "", lambda w, r: get(r, "total", "ops_per_s"), True, True),
    ("scanned keys/s", "", lambda w, r: get(r, "total", "scanned_keys_per_s"), True, False),
    ("p50 µs", "", lambda w, r: latency(r, w, "p50"), False, True),
    ("p99 µs", "", lambda w, r: latency(r, w, "p99"), False, False),
    ("p99.9 µs", "", lambda w, r: latency(r, w, "p999"), False, False),
    ("max µs", "", lambda w, r: latency(r, w, "max"), False, False),
    ("peak RSS MiB", "", lambda w, r: peak_mib(r), False, False),
    ("CPU µs/op", "", lambda w, r: cpu_us_per_op(r), False, False),
    ("errors", "", lambda w, r: get(r, "total", "errors"), None, False),
]


def floors(store_data, all_data, workload, runs):
    """(store floor report, ping floor report) for a workload, either may be None."""
    fl = store_data.get("floor", {})
    emb = runs.get("strata-embedded")
    n = 1 if clients(workload, emb or runs.get("strata-grpc")) == 1 else 64
    store_floor = None
    if workload.startswith("put-"):
        store_floor = fl.get(f"store-put-{n}")
    elif workload.startswith("get-"):
        store_floor = fl.get(f"store-get-{n}")
    # The empty round trip does not depend on the store: bench-compare.sh measures it on
    # local only, so other stores borrow it.
    ping = fl.get(f"ping-{n}") or get(all_data, "local", "floor", f"ping-{n}")
    return store_floor, ping


def floor_value(figure, report):
    """ops/s or p50 of a floor run (floor runs record their requests under kind "floor")."""
    if figure == "ops/s":
        return get(report, "total", "ops_per_s")
    return get(report, "ops", "floor", "latency_us", "p50")


def build_rows(data):
    rows = []
    for store in sorted(data, key=lambda s: (s != "local", s)):
        sd = data[store]
        workloads = {w for s in SYSTEMS for w in sd.get(s, {})}
        for w in sorted(workloads, key=lambda w: (WORKLOAD_ORDER + [w]).index(w)):
            runs = {s: sd.get(s, {}).get(w) for s in SYSTEMS}
            sfloor, ping = floors(sd, data, w, runs)
            for name, unit, getter, higher, floored in FIGURES:
                if name == "scanned keys/s" and not w.startswith("scan"):
                    continue
                vals = {s: getter(w, r) if r else None for s, r in runs.items()}
                if name == "errors" and not any(vals.values()):
                    continue
                row = {"store": store, "workload": w, "figure": name, "values": vals,
                       "ratios": {}, "floors": {}}
                if higher is not None:
                    for a, b in RATIOS:
                        row["ratios"][f"{SHORT[a]}/{SHORT[b]}"] = ratio(vals[a], vals[b], higher)
                if floored:
                    sf, pf = floor_value(name, sfloor), floor_value(name, ping)
                    row["floors"] = {
                        "store": sf, "emb/store": ratio(vals["strata-embedded"], sf, higher),
                        "ping": pf, "grpc/ping": ratio(vals["strata-grpc"], pf, higher)}
                rows.append(row)
    return rows


def rows_text(rows, store):
    header = (["workload", "figure"] + SYSTEMS
              + [f"{SHORT[a]}/{SHORT[b]} ×better" for a, b in RATIOS]
              + ["store floor", "emb/floor", "ping floor", "grpc/ping"])
    out, last = [], None
    for r in rows:
        if r["store"] != store:
            continue
        f = r["floors"]
        out.append([r["workload"] if r["workload"] != last else "", r["figure"]]
                   + [fmt(r["values"][s]) for s in SYSTEMS]
                   + [fmt(v, "x") for v in r["ratios"].values()] + ["-"] * (3 - len(r["ratios"]))
                   + [fmt(f.get("store")), fmt(f.get("emb/store"), "x"),
                      fmt(f.get("ping")), fmt(f.get("grpc/ping"), "x")])
        last = r["workload"]
    return md_table(header, out)


def floor_text(sd):
    fl = sd.get("floor", {})
    out = []
    for w in sorted(fl):
        r = fl[w]
        lat = lambda p: get(r, "ops", "floor", "latency_us", p)
        out.append([w, fmt(get(r, "config", "clients")), fmt(get(r, "total", "ops_per_s")),
                    fmt(lat("p50")), fmt(lat("p99")), fmt(lat("max")),
                    fmt(get(r, "total", "errors"))])
    return md_table(["floor run", "clients", "ops/s", "p50 µs", "p99 µs", "max µs", "errors"], out)


def cost_rows(data):
    out = []
    for store in sorted(data):
        for w, r in sorted(data[store].get("strata-embedded", {}).items()):
            sr, ops = r.get("store_requests"), get(r, "total", "ops")
            if not sr or not ops:
                continue
            n = {k: sr.get(k) or 0 for k in ("puts", "gets", "heads", "lists", "deletes")}
            usd = ((n["puts"] + n["lists"]) * PUT_USD + (n["gets"] + n["heads"]) * GET_USD) / ops
            out.append({"store": store, "workload": w, **n, "ops": ops,
                        "requests_per_op": sr.get("requests_per_op"),
                        "usd_per_million_ops": usd * 1e6})
    return out


def evaluate_targets(data, cost):
    loc = data.get("local", {})
    run = lambda s, w: get(loc, s, w)
    ops_s = lambda s, w: get(run(s, w), "total", "ops_per_s")
    p50 = lambda s, w: latency(run(s, w), w, "p50")
    targets = []

    def add(name, value, target, ok, unit=""):
        status = "n.a." if ok is None else ("PASS" if ok else "FAIL")
        targets.append({"name": name, "value": value, "target": target, "status": status,
                        "unit": unit})

    def at_least(name, a, b, k, unit="ops/s"):
        ok = None if a is None or b is None else a >= k * b
        add(name, a, None if b is None else k * b, ok, unit)

    def at_most(name, a, limit, unit):
        add(name, a, limit, None if a is None or limit is None else a <= limit, unit)

    at_least("put-64: embedded ops/s >= 2 × slatedb-1ms", ops_s("strata-embedded", "put-64"),
             ops_s("slatedb-1ms", "put-64"), 2)
    at_least("put-64: grpc ops/s >= 1 × slatedb-1ms", ops_s("strata-grpc", "put-64"),
             ops_s("slatedb-1ms", "put-64"), 1)
    s = p50("slatedb-1ms", "put-1")
    at_most("put-1: grpc put p50 <= 0.5 × slatedb-1ms", p50("strata-grpc", "put-1"),
            None if s is None else 0.5 * s, "µs")
    at_most("get-1: embedded get p50 <= slatedb-1ms", p50("strata-embedded", "get-1"),
            p50("slatedb-1ms", "get-1"), "µs")
    at_least("get-uniform-64: embedded ops/s >= slatedb-1ms",
             ops_s("strata-embedded", "get-uniform-64"), ops_s("slatedb-1ms", "get-uniform-64"), 1)
    at_least("get-uniform-64: grpc ops/s >= 0.8 × floor ping-64",
             ops_s("strata-grpc", "get-uniform-64"), ops_s("floor", "ping-64"), 0.8)
    at_most("get-cold-16: embedded store GETs per op <= 1",
            get(run("strata-embedded", "get-cold-16"), "store_requests", "gets_per_op"), 1, "GETs")

    # Tails and memory over every strata run (local).
    slow, tails, checked = [], [], 0
    for system in ("strata-embedded", "strata-grpc"):
        for w, r in sorted(loc.get(system, {}).items()):
            for kind, op in (r.get("ops") or {}).items():
                lat = op.get("latency_us")
                if not op.get("count") or not lat:
                    continue
                checked += 1
                if kind == "put" and lat["p99"] > 10_000:
                    slow.append(f"{system}/{w} put p99 {lat['p99']:,} µs")
                if lat["max"] > 200_000:
                    tails.append(f"{system}/{w} {kind} max {lat['max']:,} µs")
    ok = None if not checked else not slow
    none = "none over" if checked else None
    add("all strata runs: put p99 <= 10 ms", "; ".join(slow) or none, 10_000, ok, "µs")
    add("all strata runs: max <= 200 ms (every kind)", "; ".join(tails) or none, 200_000,
        None if not checked else not tails, "µs")
    fat, seen = [], 0
    for w, r in sorted(loc.get("strata-grpc", {}).items()):
        m = peak_mib(r)
        if m is not None:
            seen += 1
            if m > RSS_LIMIT_MIB:
                fat.append(f"{w} {m:.0f} MiB")
    add("all strata-grpc runs: server peak RSS <= 512 + 256 MiB",
        "; ".join(fat) or ("none over" if seen else None),
        RSS_LIMIT_MIB, None if not seen else not fat, "MiB")

    for store in ("local", "s3"):
        c = next((c for c in cost if c["store"] == store and c["workload"] == "mix-16"), None)
        if c or store == "local":
            v = c and c["usd_per_million_ops"]
            add(f"mix-16 ({store}): S3 request cost < $0.05 per million ops", v, 0.05,
                None if v is None else v < 0.05, "$/M ops")

    for w, share, unit, cpu_budget, what in (
            ("get-uniform-64", PER_CORE_READS, "reads/s/core", CPU_US_READ, "read"),
            ("put-64", PER_CORE_WRITES, "writes/s/core", CPU_US_WRITE, "write")):
        v = ops_s("strata-grpc", w)
        # The cores of the machine that ran the bench (recorded in its config), else this one's.
        cores = get(run("strata-grpc", w), "config", "cores") or os.cpu_count() or 1
        at_least(f"{w}: grpc ops/s per core ({cores} cores) >= {share}",
                 None if v is None else v / cores, share, 1, unit)
        at_most(f"{w}: server CPU µs per {what} <= {cpu_budget}",
                cpu_us_per_op(run("strata-grpc", w)), cpu_budget, "µs")
    return targets


def targets_text(targets):
    out = []
    for t in targets:
        v = t["value"]
        v = v if isinstance(v, str) else fmt(v, "$" if t["unit"] == "$/M ops" else "")
        tv = fmt(t["target"], "$" if t["unit"] == "$/M ops" else "")
        out.append([t["status"], t["name"], v, tv, t["unit"]])
    return md_table(["status", "target", "value", "limit", "unit"], out)


def cost_text(cost):
    out = [[c["store"], c["workload"], fmt(c["puts"]), fmt(c["gets"]), fmt(c["heads"]),
            fmt(c["lists"]), fmt(c["deletes"]), fmt(c["ops"]), fmt(c["requests_per_op"]),
            fmt(c["usd_per_million_ops"], "$")] for c in cost]
    return md_table(["store", "workload", "PUTs", "GETs", "HEADs", "LISTs", "DELETEs", "ops",
                     "requests/op", "$ per M ops"], out)


# ---------------------------------------------------------------- plots


def plots(data, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "note: matplotlib is not installed: no plots (pip install matplotlib)"
    pdir = out / "plots"
    pdir.mkdir(exist_ok=True)
    made = 0

    def save(fig, name):
        nonlocal made
        fig.tight_layout()
        fig.savefig(pdir / name, dpi=100)
        plt.close(fig)
        made += 1

    nines = lambda q: -math.log10(1 - q)
    for store, sd in data.items():
        workloads = sorted({w for s in SYSTEMS for w in sd.get(s, {})},
                           key=lambda w: (WORKLOAD_ORDER + [w]).index(w))
        for w in workloads:
            runs = {s: sd[s][w] for s in SYSTEMS if w in sd.get(s, {})}
            fig, ax = plt.subplots(figsize=(7, 4.5))
            drawn = False
            for s, r in runs.items():
                curve = get(r, "ops", main_kind(w, r), "curve_us") or []
                pts = [(nines(q), us) for q, us in curve if q < 1 and us > 0]
                if not pts:
                    continue
                line, = ax.plot(*zip(*pts), marker=".", label=s)
                mx = [us for q, us in curve if q >= 1]
                if mx and mx[0] > 0:
                    ax.plot([4.5], mx, marker="x", color=line.get_color())
                drawn = True
            if drawn:
                ax.set_xticks([0, nines(0.5), 1, 2, 3, 4, 4.5],
                              ["0%", "50%", "90%", "99%", "99.9%", "99.99%", "max"])
                ax.set_yscale("log")
                ax.set(xlabel="percentile", ylabel="latency µs",
                       title=f"{store} {w}: {main_kind(w, next(iter(runs.values())))} latency")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend()
                save(fig, f"latency-{store}-{w}.png")
            else:
                plt.close(fig)

            fig, ax = plt.subplots(figsize=(7, 4))
            drawn = False
            for s, r in runs.items():
                xs, ys, prev = [], [], 0
                for ms, n in r.get("timeline") or []:
                    if ms > prev:
                        xs.append(ms / 1000)
                        ys.append(n / ((ms - prev) / 1000))
                    prev = ms
                if xs:
                    ax.plot(xs, ys, label=s)
                    drawn = True
            if drawn:
                ax.set(xlabel="s", ylabel="requests/s", title=f"{store} {w}: throughput")
                ax.set_ylim(bottom=0)
                ax.grid(True, alpha=0.3)
                ax.legend()
                save(fig, f"throughput-{store}-{w}.png")
            else:
                plt.close(fig)

        grpc = sd.get("strata-grpc", {})
        series = [(w, get(grpc[w], "rss", "samples")) for w in workloads if w in grpc]
        series = [(w, s) for w, s in series if s]
        if series:
            fig, ax = plt.subplots(figsize=(8, 4.5))
            for w, samples in series:
                ax.plot([ms / 1000 for ms, _ in samples], [b / MiB for _, b in samples], label=w)
            ax.axhline(RSS_LIMIT_MIB, color="red", linestyle="--", label="budget + 256 MiB")
            ax.set(xlabel="s", ylabel="RSS MiB", title=f"{store}: strata-grpc server RSS")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small", ncol=2)
            save(fig, f"rss-{store}.png")

        if workloads:
            fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(workloads) + 2), 4.5))
            width = 0.8 / len(SYSTEMS)
            for i, s in enumerate(SYSTEMS):
                vals = [get(sd, s, w, "total", "ops_per_s") or 0 for w in workloads]
                ax.bar([j + (i - 1.5) * width for j in range(len(workloads))], vals, width,
                       label=s)
            ax.set_xticks(range(len(workloads)), workloads, rotation=45, ha="right")
            ax.set_yscale("log")
            ax.set(ylabel="ops/s", title=f"{store}: throughput per workload")
            ax.grid(True, axis="y", which="both", alpha=0.3)
            ax.legend(fontsize="small")
            save(fig, f"summary-{store}.png")
    return f"{made} plots in {pdir}"


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 1 or any(a not in ("--no-plots",) for a in argv if a.startswith("--")):
        sys.exit(__doc__)
    out = Path(args[0])
    data = load(out)
    if not data:
        sys.exit(f"no reports under {out / 'json'}")
    rows = build_rows(data)
    cost = cost_rows(data)
    targets = evaluate_targets(data, cost)

    text = ["# Strata vs SlateDB", "", LEGEND, ""]
    for store in sorted(data, key=lambda s: (s != "local", s)):
        text += [f"## {store} store", ""]
        if any(r["store"] == store for r in rows):
            text += [rows_text(rows, store), ""]
        if data[store].get("floor"):
            text += [f"### {store} floor runs", "", floor_text(data[store]), ""]
    text += ["## Targets (local store unless stated)", "", targets_text(targets), ""]
    text += ["## Object-store request cost (strata-embedded; S3 list prices: PUT/LIST "
             "$0.005 per 1,000, GET/HEAD $0.0004 per 1,000, DELETE free)", "",
             cost_text(cost) if cost else "no store_requests in any strata-embedded report", ""]
    text = "\n".join(text)
    print(text)
    (out / "compare.txt").write_text(text + "\n")
    (out / "compare.json").write_text(json.dumps(
        {"rows": rows, "targets": targets, "cost": cost}, indent=2, ensure_ascii=False) + "\n")
    if "--no-plots" not in argv:
        print(plots(data, out), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
