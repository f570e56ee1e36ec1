#!/usr/bin/env bash
# The Spark reference of Sluice's word-count benchmark.
#
#   benches/spark/run.sh SIZE...        e.g. benches/spark/run.sh 10MB 100MB
#
# For each SIZE: writes a corpus with `sluice-bench corpus` (the release
# binary, so build it first), runs benches/spark/wordcount.py on it RUNS
# times (a fresh JVM each time) in each configuration of SPARK_BATCHES, and
# prints the median words/s and the peak RSS. Per-run JSON lines go to
# stderr as they come, the summary to stdout.
#
# Configurations: 1 = the whole corpus as one file in one micro-batch
# (Spark's best case: one planning and one state-store commit); 20 = the
# same lines split into 20 files read one per micro-batch
# (maxFilesPerTrigger=1), as a stream that arrives over time is.
#
# Environment:
#   CARGO_TARGET_DIR  where the release sluice binary is (default ~/.cache/sluice-target)
#   SLUICE_BENCH_DIR  parent of the temp dir holding corpus and checkpoints (default /tmp/sluice-bench)
#   RUNS              runs per size (default 3)
#   SEED              corpus seed (default 42)
#   SPARK_BATCHES     micro-batch configurations to run (default "1 20")
#   KEEP=1            keep the temp dir (corpus files) afterwards
#
# Installs what it lacks: pyspark (pinned, from PyPI) and GNU time (Debian's
# `time` package). Needs Java 17 or later, which Spark 4 requires.
set -euo pipefail

# Spark 4.1 runs on Java 17 and 21 (Spark 4 dropped Java 8 and 11); pinned so
# the reference does not drift between runs of the comparison.
PYSPARK_VERSION=4.1.1
RUNS=${RUNS:-3}
read -r -a batch_configs <<<"${SPARK_BATCHES:-1 20}"
for b in "${batch_configs[@]}"; do
  [[ $b == 1 || $b == 20 ]] || { echo "SPARK_BATCHES: $b is not 1 or 20" >&2; exit 2; }
done
SEED=${SEED:-42}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sluice_bench=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}/release/sluice-bench

if (($# == 0)); then
  echo "usage: $0 SIZE... (e.g. 10MB 100MB)" >&2
  exit 2
fi

# --- prerequisites -----------------------------------------------------------
[ -x "$sluice_bench" ] || {
  echo "no release binary at $sluice_bench: build it with" \
    "CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target} cargo build --release --bins" >&2
  exit 1
}
command -v java >/dev/null || { echo "java not found: Spark $PYSPARK_VERSION needs Java 17+" >&2; exit 1; }
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
  echo "Java ${java_major:-?} found: Spark $PYSPARK_VERSION needs Java 17+" >&2
  exit 1
fi
if [ ! -x /usr/bin/time ]; then
  echo "Installing GNU time" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq time >/dev/null
fi
if ! python3 -c "import pyspark, sys; sys.exit(pyspark.__version__ != '$PYSPARK_VERSION')" 2>/dev/null; then
  echo "Installing pyspark $PYSPARK_VERSION" >&2
  python3 -m pip install -q "pyspark==$PYSPARK_VERSION" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "pyspark==$PYSPARK_VERSION"
fi

# --- runs --------------------------------------------------------------------
base=${SLUICE_BENCH_DIR:-/tmp/sluice-bench}
mkdir -p "$base"
tmp=$(mktemp -d "$base/spark.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
  echo "keeping $tmp" >&2
else
  trap 'rm -rf "$tmp"' EXIT
fi

echo "spark word count: pyspark $PYSPARK_VERSION, java $java_major, local[2], median of $RUNS runs, seed $SEED"
for size in "$@"; do
  corpus="$tmp/corpus-$size"
  mkdir -p "$corpus"
  gen=$("$sluice_bench" corpus --size "$size" --seed "$SEED" --out "$corpus/corpus.txt")
  words=$(awk '$1 == "words" { print $2 }' <<<"$gen")
  bytes=$(awk '$1 == "bytes" { print $2 }' <<<"$gen")
  echo "corpus $size: $bytes bytes, $words words" >&2
  for batches in "${batch_configs[@]}"; do
    input=$corpus
    per_trigger=()
    if ((batches == 20)); then
      input="$tmp/corpus-$size-20"
      mkdir -p "$input"
      # At line boundaries, so every file holds whole lines.
      split -n l/20 -d "$corpus/corpus.txt" "$input/part-"
      per_trigger=(--max-files-per-trigger 1)
    fi
    results="$tmp/results-$size-$batches.jsonl"
    : >"$results"
    for ((i = 1; i <= RUNS; i++)); do
      verify=()
      ((i == 1)) && verify=(--verify) # count the words once with a batch job (untimed)
      timelog="$tmp/time-$size-$i.txt"
      /usr/bin/time -v -o "$timelog" \
        python3 "$here/wordcount.py" "$input" --words "$words" --work-dir "$tmp" "${verify[@]}" "${per_trigger[@]}" \
        >"$tmp/out.json" 2>"$tmp/stderr.txt" || {
        echo "run $i failed:" >&2
        tail -n 40 "$tmp/stderr.txt" >&2
        exit 1
      }
      # GNU time's figure is the wait4() ru_maxrss of python3: the largest
      # single process among python3 and the descendants it reaped, so it
      # misses the JVM unless python3 reaps it (see the JSON's jvm_peak_rss_kb).
      time_kb=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$timelog")
      python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); r["time_v_max_rss_kb"] = int(sys.argv[2]); print(json.dumps(r))' \
        "$tmp/out.json" "$time_kb" | tee -a "$results" >&2
    done
    python3 - "$results" "$size" "$batches" <<'EOF'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
runs.sort(key=lambda r: r["words_per_s"])
m = runs[len(runs) // 2]
jvm = max(r["jvm_peak_rss_kb"] or 0 for r in runs)
print(
    f"{sys.argv[2]}, {m['micro_batches']} micro-batch(es): {m['bytes']} bytes, {m['words']} words, median {m['seconds']:.2f} s"
    f" = {m['words_per_s'] / 1e6:.2f} M words/s ({m['mb_per_s']:.1f} MB/s),"
    f" runs {', '.join('%.2f' % r['seconds'] for r in runs)} s;"
    f" peak RSS: JVM {jvm / 1024:.0f} MiB (VmHWM, max of runs),"
    f" python {max(r['python_peak_rss_kb'] for r in runs) / 1024:.0f} MiB,"
    f" time -v {max(r['time_v_max_rss_kb'] for r in runs) / 1024:.0f} MiB;"
    f" startup {m['startup_seconds']:.1f} s (not timed)"
)
print(json.dumps({
    "engine": "spark", "size": sys.argv[2], "batches": m["micro_batches"], "bytes": m["bytes"],
    "words": m["words"], "seconds": m["seconds"], "words_per_s": m["words_per_s"],
    "jvm_peak_rss_kb": jvm, "runs": len(runs), "spark_version": m["spark_version"],
}))
EOF
  done
done
