"""`bench ls`, `bench show`, `bench leaderboard` and `bench export`: the commands that read the store."""

from __future__ import annotations

import json
import os
import sys

from bench.errors import BenchError
from bench.store import Store


LEADERBOARD_COLUMNS = ["model", "method", "pattern", "activations", "hardware", "kernel", "seed", "protocol", "measured_sparsity",
                       "activation_sparsity", "perplexity",
                       "perplexity_change_vs_dense", "kl_vs_dense", "decode_tok_s_b1", "decode_speedup_b1",
                       "decode_speedup_b1_lo", "decode_speedup_b1_hi", "decode_speedup_b1_verdict", "decode_speedup_b1_rounds",
                       "decode_aa_b1", "decode_aa_b1_lo", "decode_aa_b1_hi", "decode_predicted_speedup_b1",
                       "decode_outside_share_b1", "prefill_ms", "prefill_speedup", "prefill_speedup_lo", "prefill_speedup_hi",
                       "prefill_speedup_verdict", "prefill_speedup_rounds", "prefill_aa", "task_acc_mean",
                       "task_acc_change_vs_dense", "task_flips_mean", "kernel_status", "decode_kernel_status_b1",
                       "prefill_kernel_status", "job_key"]


def speed_cell(value: float, lo: float, hi: float, verdict: str | None) -> str:
    """A speedup as the table shows it: the median with its 95% interval and verdict, or 1x by definition."""
    if value != value:  # NaN: not timed
        return ""
    if verdict == "dense":
        return "1x (dense)"
    return f"{ratio_text(value, lo, hi)} {VERDICT_SHORT.get(verdict, 'no verdict')}"


def ratio_text(value: float, lo: float, hi: float) -> str:
    """A ratio and its interval to three significant figures, trailing zeros kept: `1.20 [1.20-1.29]`."""
    interval = f" [{lo:#.3g}-{hi:#.3g}]" if lo == lo and hi == hi else ""
    return f"{value:#.3g}{interval}"


VERDICT_SHORT = {"faster": "faster", "slower": "slower", "no measurable difference": "no diff."}


def cmd_ls(args) -> int:
    store = Store(args.db)
    where, params = [], []
    if args.status:
        where.append("status = ?")
        params.append(args.status)
    if args.run:
        where.append("run_id = ?")
        params.append(args.run)
    sql = ("SELECT job_key, status, model, method, pattern, hardware, kernel, seed, round(duration_s, 2) AS seconds, "
           "run_id, error FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") +
           " ORDER BY model, method, target_sparsity, pattern, hardware, kernel, seed")
    df = store.query(sql, params)
    if df.empty:
        print("no jobs")
        return 0
    df["error"] = df["error"].fillna("").str.slice(0, 80)
    print(df.to_string(index=False))
    return 0


def cmd_show(args) -> int:
    store = Store(args.db)
    jobs = store.query("SELECT * FROM jobs WHERE starts_with(job_key, ?)", [args.job])  # no LIKE: '%' is literal
    if len(jobs) != 1:
        raise BenchError(f"job '{args.job}': {'no job has that key' if jobs.empty else f'{len(jobs)} jobs share that prefix; give more characters'}")
    job = jobs.iloc[0]
    run = store.query("SELECT * FROM runs WHERE run_id = ?", [job["run_id"]])
    metrics = store.query(
        "SELECT name, value, unit, stderr, CAST(json_extract(details, '$.speedup_paired.lo') AS DOUBLE) AS lo_95, "
        "CAST(json_extract(details, '$.speedup_paired.hi') AS DOUBLE) AS hi_95, "
        "json_extract_string(details, '$.verdict') AS verdict, stage FROM metrics WHERE job_key = ? "
        "ORDER BY stage, name", [job["job_key"]])
    stages = store.query(
        "SELECT kind, status, CASE WHEN run_id = ? THEN 'this run' ELSE 'reused from ' || run_id END AS ran, attempts, "
        "round(duration_s, 2) AS seconds, round(peak_rss_bytes / 2^30, 3) AS peak_GiB, "
        "json_extract_string(result, '$.peak_rss_scope') AS peak_of, started_at, stage_key FROM stages "
        "WHERE stage_key IN (?, ?, ?) ORDER BY started_at",
        [job["run_id"], job.get("prune_key"), job.get("eval_key"), job.get("latency_key")])
    layers = store.query("SELECT layer, out_features, in_features, measured_sparsity FROM layers WHERE job_key = ? ORDER BY block, layer", [job["job_key"]])
    for col in ("job_key", "status", "model", "model_location", "model_fingerprint", "method", "method_version",
                "method_params", "pattern", "activations", "hardware", "kernel", "kernel_version", "seed", "run_id", "started_at",
                "finished_at", "duration_s", "kernel_status", "prune_key", "eval_key", "latency_key", "artifact",
                "error"):
        if col in job and job[col] is not None and str(job[col]) not in ("nan", "NaT", "None"):
            print(f"{col:>18}: {job[col]}")
    if not run.empty:
        r = run.iloc[0]
        print(f"{'git_commit':>18}: {r['git_commit']}{' (dirty)' if r['git_dirty'] else ''}")
        print(f"{'packages':>18}: {r['packages']}")
        print(f"{'driver hardware':>18}: {r['hardware']}")
    if job["worker"]:
        print(f"{'worker hardware':>18}: {job['worker']}")
    if job["kernel_provenance"]:
        print(f"{'kernel':>18}: {job['kernel_provenance']}")
    if not stages.empty:
        print("\nstages (peak memory of the stage, or of its worker's life where it could not be reset):")
        print(stages.to_string(index=False))
    if not metrics.empty:
        print("\nmetrics (speedups with their 95% interval and verdict):")
        for col in ("lo_95", "hi_95", "verdict", "stderr"):
            if metrics[col].isna().all():
                metrics = metrics.drop(columns=col)
        print(metrics.to_string(index=False))
    if not layers.empty:
        print(f"\nlayers ({len(layers)}):")
        print(layers.to_string(index=False))
    if job["traceback"]:
        print("\ntraceback:\n" + job["traceback"])
    return 0


# The terminal table's default: what a row is, its accuracy, and its speed with its interval and verdict.
# `--wide` prints every column of LEADERBOARD_COLUMNS (csv and json always do).
COMPACT = {"model": "model", "method": "method", "pattern": "pattern", "activations": "acts", "hardware": "hw",
           "kernel": "kernel", "seed": "seed", "perplexity": "ppl", "perplexity_change_vs_dense": "ppl vs dense",
           "kl_vs_dense": "KL", "task_acc_mean": "tasks", "decode_speedup_b1": "decode b1 x dense [95%] verdict",
           "decode_kernels": "decode kernels"}


def _compact(df):
    """The compact table: COMPACT's columns under their short names, a column left out where every row holds
    one value that says nothing (one hardware target, one seed, dense activations) or none (a metric no row
    measured), the change in perplexity as a signed percentage."""
    df = df.assign(decode_kernels=df["decode_kernel_status_b1"].fillna(df["kernel_status"])
                   if "decode_kernel_status_b1" in df else df.get("kernel_status"))
    out = df[[c for c in COMPACT if c in df.columns]].copy()
    for col in ("activations", "hardware", "seed"):
        if col in out and out[col].nunique(dropna=False) <= 1 and (col != "activations" or (out[col] == "none").all()):
            out = out.drop(columns=col)
    empty = [c for c in ("perplexity", "perplexity_change_vs_dense", "kl_vs_dense", "task_acc_mean")
             if c in out and out[c].isna().all()]  # not measured by any row here
    out = out.drop(columns=empty)
    if "perplexity_change_vs_dense" in out:
        out["perplexity_change_vs_dense"] = [f"{v:+.1%}" if v == v else "" for v in out["perplexity_change_vs_dense"]]
    return out.rename(columns=COMPACT)


def cmd_leaderboard(args) -> int:
    df = Store(args.db).leaderboard()
    cols = [c for c in LEADERBOARD_COLUMNS if c in df.columns]
    cols[-1:-1] = sorted(c for c in df.columns if c.endswith("/acc"))  # one column per task, before job_key
    df = df[cols]
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        for row in df.to_dict(orient="records"):
            print(json.dumps(row, default=str))
    elif df.empty:
        print("the leaderboard is empty: no job has finished yet")
    else:
        # Display only: the store and the csv/json formats keep every digit. A speedup is shown to three
        # significant figures (trailing zeros kept: 1.20, never 1.2 beside 1.28) with the 95% interval of
        # its paired per-round ratios and its verdict against the A/A noise floor. Rows measured under
        # different perplexity protocols are never in one table: one table per protocol.
        df = df.drop(columns=["job_key"]).copy()
        for col in ("decode_speedup_b1", "prefill_speedup"):
            if col in df:
                df[col] = [speed_cell(v, lo, hi, verdict) for v, lo, hi, verdict in
                           zip(df[col], df.pop(col + "_lo"), df.pop(col + "_hi"), df.pop(col + "_verdict"))]
        if "decode_aa_b1" in df:
            df["decode_aa_b1"] = [ratio_text(v, lo, hi) if v == v else "" for v, lo, hi in
                                  zip(df["decode_aa_b1"], df.pop("decode_aa_b1_lo"), df.pop("decode_aa_b1_hi"))]
        protocols = df.pop("protocol") if "protocol" in df else None
        groups = [(None, df)] if protocols is None else [
            (p, df[protocols.fillna("") == p]) for p in sorted(protocols.fillna("").unique())]
        for i, (protocol, part) in enumerate(groups):
            if protocol is not None and (len(groups) > 1 or protocol):
                print(("\n" if i else "") + f"perplexity protocol: {protocol or 'none (no perplexity measured)'}")
            shown = part if args.wide else _compact(part)
            print(shown.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        if not args.wide:
            print("(bench leaderboard --wide: every column, tasks and prefill included)")
    return 0


def cmd_export(args) -> int:
    store = Store(args.db)
    if args.path.exists() and not args.path.is_dir():
        raise BenchError(f"export: {args.path} is a file; give a folder (it is made if missing)")
    with store.read():  # a missing or foreign store is refused before the folder is made
        pass
    try:
        args.path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"export: cannot make the folder {args.path}: {err.strerror or err}") from None
    ext = args.format
    opts = "(FORMAT parquet)" if ext == "parquet" else "(FORMAT csv, HEADER true)"
    import duckdb

    targets = [(table, args.path / f"{table}.{ext}")
               for table in ("runs", "jobs", "stages", "metrics", "layers", "leaderboard")]
    for _, target in targets:
        if target.is_dir():
            raise BenchError(f"export: {target} is a folder; move it away or export into another folder")
    staged = []
    try:  # every file is written beside its target and renamed into place once all are written
        with store.read() as con:
            for table, target in targets:
                tmp = target.with_name(f".{target.name}.partial")
                staged.append((tmp, target))
                quoted = tmp.as_posix().replace("'", "''")
                con.execute(f"COPY (SELECT * FROM {table}) TO '{quoted}' {opts}")
        for tmp, target in staged:
            os.replace(tmp, target)
            print(target)
    except (duckdb.Error, OSError) as err:
        raise BenchError(f"export: cannot write into {args.path}: {' '.join(str(err).split())}") from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return 0
