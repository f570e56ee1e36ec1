#!/usr/bin/env bash
# Word count, Sluice and Spark Structured Streaming side by side, in one run
# on the same machine and the same corpus (seed 42):
#
#   benches/wordcount.sh [SIZE...]      default: 100MB 500MB
#
# Sluice: `sluice-bench wordcount` (in-process source and `sluice broker` +
# rdkafka; each run a child process, words/s and peak RSS, median of 3).
# Spark: benches/spark/run.sh (pyspark local[2], file source, groupBy count,
# update mode, availableNow; median of 3; JVM peak RSS).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}
(cd "$here/.." && cargo build --release --bins --quiet)
sizes=("$@")
((${#sizes[@]})) || sizes=(100MB 500MB)
joined=$(IFS=,; echo "${sizes[*]}")
dir=${SLUICE_BENCH_DIR:-/tmp/sluice-bench}
mkdir -p "$dir"
echo "== Sluice"
"$CARGO_TARGET_DIR/release/sluice-bench" wordcount --sizes "$joined" --runs "${RUNS:-3}" --dir "$dir/sluice"
echo "== Spark"
"$here/spark/run.sh" "${sizes[@]}"
