"""SparseBench: accuracy and measured latency of pruned language models, one record per job.

    bench submit examples/quickstart.toml     # run a grid on Ray into DuckDB
    bench leaderboard                          # print the ranked table

The package is split by what varies: `grid` (what to run), `patterns` (where zeros may go),
`registry` (methods and kernel backends found through entry points), `prune`/`evaluate`/`latency`
(the stages of one job), `runner` (Ray), `store` (DuckDB) and `cli`.
"""

__version__ = "0.1.0"
