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
# as 4 files (one per partition) and then the same 4 files again, four
# files per batch (maxFilesPerTrigger): batch 1 counts new keys, batch 2
# updates every key; update mode, noop sink, with RocksDBStateStoreProvider
# (1 GiB heap) and with the default state store (4 GiB heap: with 1 GiB it
# runs out of memory at 5 M keys); each batch's time (Spark's
# triggerExecution), the query's and the JVM's peak RSS. Installs pyspark
# through benches/spark/run.sh's prerequisites when missing.
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
  # The same lines again, newer (Spark takes files oldest first): batch 2.
  later=$(($(date +%s) + 5))
  for p in 0 1 2 3; do
    cp "$lines/part-$p.txt" "$lines/part-$((p + 4)).txt"
    touch -d "@$later" "$lines/part-$((p + 4)).txt"
  done
  for store in rocksdb default; do
    memory=1g
    [ "$store" = default ] && memory=4g
    if python3 "$here/spark/wordcount.py" "$lines" --words "$((2 * n))" --work-dir "$dir" \
      --max-files-per-trigger 4 --state-store "$store" --driver-memory "$memory" \
      >"$dir/spark-keys.json" 2>"$dir/spark-keys.log"; then
      python3 - "$dir/spark-keys.json" "$n" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
b = r["batch_seconds"] + [float("nan")] * 2
print(f"spark {r['state_store']:>8} ({r['driver_memory']} heap): {n} new keys {b[0]:.2f} s"
      f" ({n / b[0]:,.0f} records/s), the same keys updated {b[1]:.2f} s ({n / b[1]:,.0f} records/s),"
      f" query {r['seconds']:.2f} s, JVM peak RSS {(r['jvm_peak_rss_kb'] or 0) / 1024:.0f} MiB"
      f" (start-up {r['startup_seconds']:.1f} s, not timed)")
EOF
    else
      echo "spark ($store, $memory heap) failed:"
      tail -n 5 "$dir/spark-keys.log"
    fi
  done
  rm -rf "$lines"
done
