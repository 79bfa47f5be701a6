"""The store's schema: its tables and the leaderboard view, as migrations from one version to the next.

Tables: schema_version, runs (grid text and provenance), jobs (one row per job key, its status, error and
kernel provenance), metrics (long form: name, value, unit, higher_is_better, stderr), layers (the
per-layer sparsity profile), stages (one row per stage key, with a done stage's whole result). Views:
leaderboard.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from bench.errors import BenchError

SCHEMA_VERSION = 8


class StoreError(BenchError):
    """The store cannot be opened or written; the message says why, in one line."""


def schema_version(con: duckdb.DuckDBPyConnection, path: str | Path = "the store") -> int:
    """The schema version; 0 for an empty file. A DuckDB file with tables of its own and no schema_version
    was not written by SparseBench and is refused before anything reads or writes it."""
    tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                        "WHERE table_schema = 'main' ORDER BY table_name").fetchall()]
    if "schema_version" not in tables:
        if tables:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"--db: {path} is a DuckDB file but not a SparseBench store (it has tables "
                             f"{shown} and no schema_version); pass another --db")
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


# One row per finished job. "vs dense" compares with the dense job of the same model, hardware, kernel and
# seed measured under the same perplexity protocol (dataset, context, stride, tokens); when several match
# (the same dense job re-run), the latest one. (The view as of schema 5; LEADERBOARD_SQL below is today's.)
_LEADERBOARD_V5 = """
CREATE OR REPLACE VIEW leaderboard AS
WITH per_job AS (      -- metrics pivoted per job first: grouping by the key alone keeps 100k jobs fast
    SELECT job_key,
           max(value) FILTER (WHERE name = 'perplexity') AS perplexity,
           max(value) FILTER (WHERE name = 'measured_sparsity') AS measured_sparsity,
           max(value) FILTER (WHERE name = 'decode_tok_s_b1') AS decode_tok_s_b1,
           max(value) FILTER (WHERE name = 'decode_speedup_b1') AS decode_speedup_b1,
           max(CAST(json_extract(details, '$.speedup_paired.lo') AS DOUBLE)) FILTER (WHERE name = 'decode_speedup_b1') AS decode_speedup_b1_lo,
           max(CAST(json_extract(details, '$.speedup_paired.hi') AS DOUBLE)) FILTER (WHERE name = 'decode_speedup_b1') AS decode_speedup_b1_hi,
           max(json_extract_string(details, '$.verdict')) FILTER (WHERE name = 'decode_speedup_b1') AS decode_speedup_b1_verdict,
           max(CAST(json_extract(details, '$.rounds') AS INTEGER)) FILTER (WHERE name = 'decode_speedup_b1') AS decode_speedup_b1_rounds,
           max(value) FILTER (WHERE name = 'aa_decode_speedup_b1') AS decode_aa_b1,
           max(CAST(json_extract(details, '$.aa.lo') AS DOUBLE)) FILTER (WHERE name = 'aa_decode_speedup_b1') AS decode_aa_b1_lo,
           max(CAST(json_extract(details, '$.aa.hi') AS DOUBLE)) FILTER (WHERE name = 'aa_decode_speedup_b1') AS decode_aa_b1_hi,
           max(value) FILTER (WHERE name = 'decode_predicted_speedup_b1') AS decode_predicted_speedup_b1,
           max(value) FILTER (WHERE name = 'decode_outside_share_b1') AS decode_outside_share_b1,
           max(value) FILTER (WHERE name = 'prefill_ms') AS prefill_ms,
           max(value) FILTER (WHERE name = 'prefill_speedup') AS prefill_speedup,
           max(CAST(json_extract(details, '$.speedup_paired.lo') AS DOUBLE)) FILTER (WHERE name = 'prefill_speedup') AS prefill_speedup_lo,
           max(CAST(json_extract(details, '$.speedup_paired.hi') AS DOUBLE)) FILTER (WHERE name = 'prefill_speedup') AS prefill_speedup_hi,
           max(json_extract_string(details, '$.verdict')) FILTER (WHERE name = 'prefill_speedup') AS prefill_speedup_verdict,
           max(CAST(json_extract(details, '$.rounds') AS INTEGER)) FILTER (WHERE name = 'prefill_speedup') AS prefill_speedup_rounds,
           max(value) FILTER (WHERE name = 'aa_prefill_speedup') AS prefill_aa,
           max(value) FILTER (WHERE name = 'kl_vs_dense') AS kl_vs_dense,
           avg(value) FILTER (WHERE stage = 'lm_eval' AND name LIKE '%/acc') AS task_acc_mean,
           avg(value) FILTER (WHERE stage = 'lm_eval' AND name LIKE '%/flips') AS task_flips_mean,
           count(value) FILTER (WHERE stage = 'lm_eval' AND name LIKE '%/acc') AS tasks,
           max(details) FILTER (WHERE name = 'perplexity') AS perplexity_protocol
    FROM metrics GROUP BY job_key
), wide AS (
    SELECT j.job_key, j.run_id, j.model, j.method, j.pattern, j.target_sparsity, j.hardware, j.kernel,
           j.seed, j.kernel_status, m.perplexity, m.kl_vs_dense, m.measured_sparsity, m.decode_tok_s_b1, m.decode_speedup_b1,
           m.decode_speedup_b1_lo, m.decode_speedup_b1_hi, m.decode_speedup_b1_verdict, m.decode_speedup_b1_rounds,
           m.decode_aa_b1, m.decode_aa_b1_lo, m.decode_aa_b1_hi, m.decode_predicted_speedup_b1, m.decode_outside_share_b1,
           m.prefill_ms, m.prefill_speedup, m.prefill_speedup_lo, m.prefill_speedup_hi, m.prefill_speedup_verdict,
           m.prefill_speedup_rounds, m.prefill_aa, m.task_acc_mean, m.task_flips_mean, coalesce(m.tasks, 0) AS tasks,
           j.warnings, j.finished_at, m.perplexity_protocol
    FROM jobs j LEFT JOIN per_job m USING (job_key)
    WHERE j.status = 'done'
), dense AS (
    SELECT model, hardware, kernel, seed, perplexity_protocol, perplexity, task_acc_mean
    FROM wide WHERE method = 'dense'
    QUALIFY row_number() OVER (PARTITION BY model, hardware, kernel, seed, perplexity_protocol
                               ORDER BY finished_at DESC, job_key) = 1
)
SELECT w.* EXCLUDE (perplexity_protocol), w.perplexity / d.perplexity - 1 AS perplexity_change_vs_dense,
       w.task_acc_mean - d.task_acc_mean AS task_acc_change_vs_dense
FROM wide w
LEFT JOIN dense d
  ON d.model = w.model AND d.hardware = w.hardware AND d.kernel = w.kernel AND d.seed = w.seed
 AND d.perplexity_protocol IS NOT DISTINCT FROM w.perplexity_protocol
"""

# Schema 6: the activation rule of each job (`activations`, "none" for dense activations) and the sparsity
# its thresholds reached on the test data; the dense reference is the dense method with dense activations.
LEADERBOARD_SQL = (_LEADERBOARD_V5
    .replace("""           max(value) FILTER (WHERE name = 'measured_sparsity') AS measured_sparsity,""",
             """           max(value) FILTER (WHERE name = 'measured_sparsity') AS measured_sparsity,
           max(value) FILTER (WHERE name = 'activation_sparsity') AS activation_sparsity,""")
    .replace("SELECT j.job_key, j.run_id, j.model, j.method, j.pattern, j.target_sparsity, j.hardware, j.kernel,",
             "SELECT j.job_key, j.run_id, j.model, j.method, j.pattern, j.target_sparsity, j.activations,\n"
             "           m.activation_sparsity, j.hardware, j.kernel,")
    .replace("FROM wide WHERE method = 'dense'\n", "FROM wide WHERE method = 'dense' AND activations = 'none'\n"))
assert LEADERBOARD_SQL.count("activation") == 5, "the schema-6 leaderboard edits did not all apply"
_LEADERBOARD_V6 = LEADERBOARD_SQL

# Schema 7: the perplexity protocol of each row as a short label (`protocol`: dataset and split, context and
# stride, tokens scored of the split's total), so that rows measured under different protocols are told apart
# and never ranked together. NULL where the job measured no perplexity (or stored no protocol with it).
PROTOCOL_SQL = """CASE WHEN json_extract_string(w.perplexity_protocol, '$.dataset') IS NULL THEN NULL ELSE concat(
           json_extract_string(w.perplexity_protocol, '$.dataset'), ' ',
           json_extract_string(w.perplexity_protocol, '$.split'),
           ' · context ', json_extract_string(w.perplexity_protocol, '$.context_length'),
           ' stride ', json_extract_string(w.perplexity_protocol, '$.stride'),
           ' · ', json_extract_string(w.perplexity_protocol, '$.tokens_total'), ' tokens',
           CASE WHEN json_extract_string(w.perplexity_protocol, '$.max_tokens') IS NOT NULL
                THEN concat(' (at most ', json_extract_string(w.perplexity_protocol, '$.max_tokens'), ')')
                ELSE '' END) END AS protocol"""
# Also per phase, which kernels ran it (`prefill_kernel_status`, `decode_kernel_status_b1`: accelerated,
# dense fallback, partly accelerated, or the backend's own status), from the latency rows' kernel_phase.
LEADERBOARD_SQL = (_LEADERBOARD_V6
    .replace("SELECT w.* EXCLUDE (perplexity_protocol), w.perplexity / d.perplexity - 1 AS perplexity_change_vs_dense,",
             "SELECT w.* EXCLUDE (perplexity_protocol), " + PROTOCOL_SQL +
             ",\n       w.perplexity / d.perplexity - 1 AS perplexity_change_vs_dense,")
    .replace("""           max(value) FILTER (WHERE name = 'prefill_ms') AS prefill_ms,""",
             """           max(value) FILTER (WHERE name = 'prefill_ms') AS prefill_ms,
           max(json_extract_string(details, '$.kernel_phase.status')) FILTER (WHERE name = 'prefill_speedup') AS prefill_kernel_status,
           max(json_extract_string(details, '$.kernel_phase.status')) FILTER (WHERE name = 'decode_speedup_b1') AS decode_kernel_status_b1,""")
    .replace("           j.warnings, j.finished_at, m.perplexity_protocol",
             "           m.prefill_kernel_status, m.decode_kernel_status_b1, j.warnings, j.finished_at, m.perplexity_protocol"))
assert "AS protocol" in LEADERBOARD_SQL and LEADERBOARD_SQL.count("kernel_status_b1") == 2 and \
    LEADERBOARD_SQL.count("prefill_kernel_status") == 2, "the schema-7 leaderboard edits did not all apply"
_LEADERBOARD_V7 = LEADERBOARD_SQL

# Schema 8: the label says whether the whole split was evaluated. Records since then store `split_tokens`
# (the split's length) beside `tokens_total` (the tokens evaluated): "whole split, N tokens", or
# "first N of M tokens" for a split cut by max_tokens. Older records keep the schema-7 wording.
_PROTOCOL_TOKENS_V7 = """' · ', json_extract_string(w.perplexity_protocol, '$.tokens_total'), ' tokens',
           CASE WHEN json_extract_string(w.perplexity_protocol, '$.max_tokens') IS NOT NULL
                THEN concat(' (at most ', json_extract_string(w.perplexity_protocol, '$.max_tokens'), ')')
                ELSE '' END) END AS protocol"""
_PROTOCOL_TOKENS = f"""CASE
           WHEN json_extract_string(w.perplexity_protocol, '$.split_tokens') IS NULL THEN concat(
                {_PROTOCOL_TOKENS_V7.removesuffix(" END AS protocol")}
           WHEN CAST(json_extract(w.perplexity_protocol, '$.tokens_total') AS BIGINT)
                < CAST(json_extract(w.perplexity_protocol, '$.split_tokens') AS BIGINT) THEN concat(
                ' · first ', json_extract_string(w.perplexity_protocol, '$.tokens_total'), ' of ',
                json_extract_string(w.perplexity_protocol, '$.split_tokens'), ' tokens (cut by max_tokens)')
           ELSE concat(' · whole split, ', json_extract_string(w.perplexity_protocol, '$.tokens_total'), ' tokens')
           END) END AS protocol"""
assert PROTOCOL_SQL.endswith(_PROTOCOL_TOKENS_V7) and LEADERBOARD_SQL.count(_PROTOCOL_TOKENS_V7) == 1
PROTOCOL_SQL = PROTOCOL_SQL.replace(_PROTOCOL_TOKENS_V7, _PROTOCOL_TOKENS)
LEADERBOARD_SQL = _LEADERBOARD_V7.replace(_PROTOCOL_TOKENS_V7, _PROTOCOL_TOKENS)
assert "cut by max_tokens" in LEADERBOARD_SQL, "the schema-8 leaderboard edit did not apply"

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY, grid_name VARCHAR, grid_file VARCHAR, grid_text VARCHAR, command VARCHAR,
            git_commit VARCHAR, git_dirty BOOLEAN, packages VARCHAR, hardware VARCHAR, ray_address VARCHAR,
            started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, status VARCHAR,
            jobs_total INTEGER, jobs_skipped INTEGER, jobs_done INTEGER, jobs_failed INTEGER, jobs_cancelled INTEGER)""",
        """CREATE TABLE jobs (
            job_key VARCHAR PRIMARY KEY, run_id VARCHAR, model VARCHAR, model_source VARCHAR, model_location VARCHAR,
            model_fingerprint VARCHAR, method VARCHAR, method_version VARCHAR, method_params VARCHAR,
            pattern VARCHAR, pattern_spec VARCHAR, target_sparsity DOUBLE, hardware VARCHAR, kernel VARCHAR,
            kernel_version VARCHAR, seed INTEGER, spec VARCHAR,
            status VARCHAR, error VARCHAR, traceback VARCHAR, attempts INTEGER,
            queued_at TIMESTAMPTZ, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, duration_s DOUBLE,
            peak_rss_bytes BIGINT, timings VARCHAR, worker VARCHAR, kernel_status VARCHAR, kernel_provenance VARCHAR,
            warnings VARCHAR)""",
        """CREATE TABLE metrics (
            job_key VARCHAR, name VARCHAR, value DOUBLE, unit VARCHAR, higher_is_better BOOLEAN, stderr DOUBLE,
            stage VARCHAR, details VARCHAR, PRIMARY KEY (job_key, name))""",
        """CREATE TABLE layers (
            job_key VARCHAR, layer VARCHAR, block INTEGER, out_features INTEGER, in_features INTEGER,
            numel BIGINT, zeros BIGINT, target_sparsity DOUBLE, measured_sparsity DOUBLE,
            PRIMARY KEY (job_key, layer))""",
        _LEADERBOARD_V5,
    ],
    # 2: a second dense job for the same model, hardware, kernel and seed (another grid's protocol) no
    # longer duplicates the leaderboard's rows; see LEADERBOARD_SQL.
    2: [_LEADERBOARD_V5],
    # 3: the stage graph. A job's record is assembled from its stages (prune, evaluate, latency); a stage is
    # stored once under its own content key and shared by every job that needs it, so a resubmitted grid
    # reruns only the stages that are missing.
    3: [
        """CREATE TABLE stages (
            stage_key VARCHAR PRIMARY KEY, kind VARCHAR, prune_key VARCHAR, hardware VARCHAR, run_id VARCHAR,
            status VARCHAR, error VARCHAR, traceback VARCHAR, attempts INTEGER,
            queued_at TIMESTAMPTZ, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, duration_s DOUBLE,
            peak_rss_bytes BIGINT, node_id VARCHAR, worker VARCHAR, result VARCHAR)""",
        "ALTER TABLE jobs ADD COLUMN prune_key VARCHAR",
        "ALTER TABLE jobs ADD COLUMN eval_key VARCHAR",
        "ALTER TABLE jobs ADD COLUMN latency_key VARCHAR",
        "ALTER TABLE jobs ADD COLUMN artifact VARCHAR",
    ],
    # 4: the leaderboard shows the KL divergence from the dense model and the mean fraction of task answers
    # that flipped against it.
    4: [_LEADERBOARD_V5],
    # 5: honest speed. Each speedup carries its 95% interval (lo, hi) in place of the p10/p90 spread, its
    # verdict and how many rounds it took; beside it the dense model timed against itself (A/A, the noise
    # floor) and the end-to-end speedup the per-shape ones predict, with the decode's share outside the
    # pruned layers. Rows stored before carry no interval or verdict (NULL).
    5: [_LEADERBOARD_V5],
    # 6: activation sparsity. Jobs stored before have dense activations.
    6: ["ALTER TABLE jobs ADD COLUMN activations VARCHAR DEFAULT 'none'",
        "UPDATE jobs SET activations = 'none' WHERE activations IS NULL",
        _LEADERBOARD_V6],
    # 7: the perplexity protocol as a column of the leaderboard (`protocol`), which groups rows by it; and
    # the kernels that ran each phase (prefill_kernel_status, decode_kernel_status_b1).
    7: [_LEADERBOARD_V7],
    # 8: the protocol label tells a whole split from one cut by max_tokens (records store split_tokens).
    8: [LEADERBOARD_SQL],
}
