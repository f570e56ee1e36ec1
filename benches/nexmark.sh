#!/usr/bin/env bash
# Nexmark on Sluice, next to Flink 1.13's published figures:
#
#   benches/nexmark.sh [EVENTS] [QUERY...]     default: 10000000, every jobs/nexmark/qN.sql
#
# Generates EVENTS Nexmark events once (`sluice nexmark generate`, seed 42,
# 4 partitions per topic) into a temporary data directory, then runs each
# query's job file jobs/nexmark/QUERY.sql with `sluice run --until-caught-up`
# RUNS times (default 3), each time as a fresh job so it reads every event,
# under /usr/bin/time: wall time, user+sys CPU time and peak RSS. A query
# whose job file does not exist yet is skipped; q14, whose user function a
# Rust job registers, runs jobs/nexmark_q14.rs built next to the binary
# (`cargo build --release -p sluice-bench --bin nexmark_q14`, or the example
# of the same file), and is skipped when neither is built. Prints a markdown
# table of medians:
#
#   events/s      all generated events / wall seconds (Flink's Nexmark counts
#                 every event of the source, whichever topics a query reads)
#   events/CPU-s  all generated events / (user + sys) seconds: throughput per
#                 core, the figure Flink's Nexmark README reports as
#                 "Throughput/Cores" (8 workers × 8 cores, 100 M events,
#                 10 M events/s, github.com/nexmark/nexmark)
#
# Environment:
#   SLUICE_BIN        the binary to measure; default: build release into
#                     $CARGO_TARGET_DIR (default ~/.cache/sluice-target)
#   SLUICE_BENCH_DIR  where the temporary data directory goes (default /tmp)
#   RUNS              runs per query (default 3)
#   SLUICE_RUN_ARGS   extra flags for every `sluice run` (word-split)
#   KEEP=1            keep the data directory (its path is printed)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

if [[ -n ${SLUICE_BIN:-} ]]; then
  bin=$SLUICE_BIN
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}
  (cd "$root" && cargo build --release --quiet --bins)
  bin=$CARGO_TARGET_DIR/release/sluice
fi
[[ -x $bin ]] || { echo "error: $bin is not an executable sluice binary" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time (GNU time) is needed: apt-get install time" >&2; exit 1; }

events=${1:-10000000}
[[ $events =~ ^[1-9][0-9]*$ ]] || { echo "error: EVENTS must be a positive integer, got '$events'" >&2; exit 1; }
shift || true
queries=("$@")
if ((${#queries[@]} == 0)); then
  for n in $(seq 0 22); do
    [[ -f $root/jobs/nexmark/q$n.sql ]] && queries+=("q$n")
  done
fi
runs=${RUNS:-3}
read -r -a run_args <<<"${SLUICE_RUN_ARGS:-}"

# Flink 1.13, Throughput/Cores (K events/s per core), from the Nexmark README.
declare -A flink=(
  [q0]=155.02 [q1]=157.94 [q2]=175.21 [q3]=152.12 [q4]=34.33 [q5]=22.14
  [q7]=12.33 [q8]=146.14 [q9]=14.24 [q10]=57.81 [q11]=39.7 [q12]=75.67
  [q13]=130.73 [q14]=161.23 [q15]=72.42 [q16]=18.65 [q17]=116.8 [q18]=53.7
  [q19]=44.04 [q20]=18.98 [q21]=98.49 [q22]=129.96
)

work=$(mktemp -d "${SLUICE_BENCH_DIR:-/tmp}/sluice-nexmark.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then
  echo "Keeping $work"
else
  trap 'rm -rf "$work"' EXIT
fi
data=$work/data

echo "== Generating $events events into $data"
"$bin" nexmark generate --events "$events" --data-dir "$data"

# Jobs run in the work directory: q13 reads jobs/data/ relative to it (a
# copy), q10 writes its files under out/ there (removed after each run).
mkdir -p "$work/jobs/data"
cp "$root/jobs/data/nexmark_side_input.csv" "$work/jobs/data/"
cd "$work"

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

rows=()
for q in "${queries[@]}"; do
  file=$root/jobs/nexmark/$q.sql
  if [[ ! -f $file ]]; then
    echo "== Skipping $q: jobs/nexmark/$q.sql does not exist yet"
    continue
  fi
  runner=("$bin" run "$file")
  if [[ $q == q14 ]]; then
    q14=$(dirname "$bin")/nexmark_q14
    [[ -x $q14 ]] || q14=$(dirname "$bin")/examples/nexmark_q14
    [[ -x $q14 ]] || { echo "== Skipping q14: $(dirname "$bin")/nexmark_q14 is not built (cargo build --release -p sluice-bench --bin nexmark_q14)"; continue; }
    runner=("$q14" --file "$file")
  fi
  echo "== $q ($runs runs)"
  : >"$work/$q.results"
  for ((run = 1; run <= runs; run++)); do
    progress=$work/$q-$run.progress.jsonl
    if ! /usr/bin/time -f '%e %U %S %M' -o "$work/time" \
      "${runner[@]}" --data-dir "$data" --until-caught-up --quiet \
      --job "nexmark-$q-run$run" --checkpoint-dir "$work/checkpoints/$q-$run" \
      --progress-json "$progress" ${run_args[@]+"${run_args[@]}"} \
      >/dev/null 2>"$work/stderr"; then
      echo "error: $q run $run failed:" >&2
      cat "$work/stderr" >&2
      exit 1
    fi
    read -r wall user sys rss_kb < <(tail -n 1 "$work/time")
    read_rows=$(grep -o '"input_rows":[0-9]*' "$progress" | awk -F: '{ s += $2 } END { print s + 0 }')
    echo "   run $run: ${wall}s wall, $(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')s CPU, $((rss_kb / 1024)) MiB peak, $read_rows rows read"
    echo "$wall $user $sys $rss_kb" >>"$work/$q.results"
    rm -rf "$work/checkpoints/$q-$run" "$work/out"
  done
  wall=$(awk '{ print $1 }' "$work/$q.results" | median)
  cpu=$(awk '{ print $2 + $3 }' "$work/$q.results" | median)
  rss=$(awk '{ print $4 / 1024 }' "$work/$q.results" | median)
  rows+=("$(awk -v q="$q" -v n="$events" -v w="$wall" -v c="$cpu" -v r="$rss" -v f="${flink[$q]:-}" '
    function commas(x,   s, out) {
      s = sprintf("%.0f", x); out = ""
      while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
      return s out
    }
    BEGIN {
      per_core = n / (c > 0 ? c : 1e-9)
      flink = f == "" ? "n/a" : commas(f * 1000)
      ratio = f == "" ? "n/a" : sprintf("%.2f×", per_core / (f * 1000))
      printf "| %s | %.2f | %s | %.2f | %s | %.0f | %s | %s |", q, w, commas(n / (w > 0 ? w : 1e-9)), c, commas(per_core), r, flink, ratio
    }')")
done

echo
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "Nexmark, $events events (seed 42, 4 partitions per topic), median of $runs runs; $(nproc) cores; $bin ($("$bin" --version), commit $commit)${SLUICE_RUN_ARGS:+; run flags: $SLUICE_RUN_ARGS}"
echo
echo "| query | wall s | events/s | CPU s | events/CPU-s | peak RSS MiB | Flink 1.13 events/s per core | events/CPU-s ÷ Flink |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]+"${rows[@]}"}"
