"""The reporting side of the harness: everything that reads records and never trains.

aggregate     records -> one row per configuration (means, intervals, paired differences)
stats         t-intervals, paired tests, Holm, Pareto front and its bootstrap probability
comparisons   the summary's paired comparisons (seed post, pretraining, placement, budgets)
evidence      tuning evidence (margin, sensitivity) and containment checks
fmt           number and text formatting shared by every table
columns       the leaderboard's columns, declared once: table, CSV, aggregation, legend
summary       the generated prose summary
tables        the matched-budget and parameter-ledger tables
header        the leaderboard's header
epochs        the epoch-sensitivity table (1x against 2x) and the summary's comparisons at 2x
compute       what a leaderboard cost: worker and wall time per part
leaderboard   leaderboard.md + .csv and its command line
chartkit      chart registry, palettes, file output; labels: the label-layout engine
charts_*      the charts, one registry entry each; charts: render them all, its command line
run_report    one run's analysis from its record
"""
