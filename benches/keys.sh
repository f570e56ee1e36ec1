#!/usr/bin/env bash
# State with millions of keys, Sluice and Spark Structured Streaming side by
# side in one run on the same machine:
#
#   benches/keys.sh [KEYS...]           default: 5000000
#
# Sluice: `sluice-bench keys` — a 4-partition topic of KEYS lines `w1` …
# `wKEYS` (every word a new key) drained by `sluice wordcount
# --until-caught-up`, then the same lines again, twice (every key updated;
# the second update pass pays for compactions the first left behind);
# records/s, CPU, peak RSS (`wait4`) and the checkpoint's bytes on disk.
# BASELINE=path/to/older/sluice measures that binary alternately.
#
# Spark: benches/spark/wordcount.py (pyspark local[2]) over the same lines
# as 4 files (one per partition), one batch, update mode, noop sink, with
# RocksDBStateStoreProvider (1 GiB heap) and with the default state store
# (4 GiB heap: with 1 GiB it runs out of memory at 5 M keys); the query's
# time and the JVM's peak RSS. Installs pyspark through benches/spark/run.sh's
# prerequisites when missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}
(cd "$here/.." && cargo build --release --bins --quiet)
keys=("$@")
((${#keys[@]})) || keys=(5000000)
dir=${SLUICE_BENCH_DIR:-${TMPDIR:-/tmp}/sluice-bench}
mkdir -p "$dir"
baseline=()
[ -n "${BASELINE:-}" ] && baseline=(--baseline "$BASELINE")

echo "== Sluice"
joined=$(IFS=,; echo "${keys[*]}")
"$CARGO_TARGET_DIR/release/sluice-bench" keys --keys "$joined" --runs "${RUNS:-1}" \
  --dir "$dir/keys" "${baseline[@]}"

echo "== Spark"
python3 -c "import pyspark" 2>/dev/null ||
  python3 -m pip install -q "pyspark==4.1.1" 2>/dev/null ||
  python3 -m pip install -q --break-system-packages "pyspark==4.1.1"
for n in "${keys[@]}"; do
  lines="$dir/spark-keys-$n"
  rm -rf "$lines"
  mkdir -p "$lines"
  # One file per partition, as the topic holds them (round-robin).
  seq -f 'w%.0f' 1 "$n" | awk -v d="$lines" '{ print > (d "/part-" ((NR - 1) % 4) ".txt") }'
  for store in rocksdb default; do
    memory=1g
    [ "$store" = default ] && memory=4g
    if python3 "$here/spark/wordcount.py" "$lines" --words "$n" --work-dir "$dir" \
      --state-store "$store" --driver-memory "$memory" >"$dir/spark-keys.json" 2>"$dir/spark-keys.log"; then
      python3 - "$dir/spark-keys.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"spark {r['state_store']:>8} ({r['driver_memory']} heap): {r['words']} keys in {r['seconds']:.2f} s"
      f" = {r['words_per_s']:,} records/s, JVM peak RSS {(r['jvm_peak_rss_kb'] or 0) / 1024:.0f} MiB"
      f" (start-up {r['startup_seconds']:.1f} s, not timed)")
EOF
    else
      echo "spark ($store, $memory heap) failed:"
      tail -n 5 "$dir/spark-keys.log"
    fi
  done
  rm -rf "$lines"
done
