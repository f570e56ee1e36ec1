#!/usr/bin/env python3
"""Word count with Apache Spark Structured Streaming: the reference side of
Sluice's word-count benchmark.

Reads every text file in DIR (made by `sluice-bench corpus`) as a stream,
splits lines on single spaces, counts per word, and drains the input once:

    spark.readStream.format("text").load(DIR)
      .select(explode(split(value, " ")).alias("word"))
      .groupBy("word").count()
      .writeStream.outputMode("update").format("noop")
      .trigger(availableNow=True)

on master local[2] with 1 GiB of driver memory (in local mode the driver is
the executor too). The time measured is from `start()` to the return of
`awaitTermination()`: planning, the micro-batch(es), state store commits,
checkpoint writes. JVM start-up and SparkSession creation are reported
apart (`startup_seconds`), not included.

Prints one JSON line on stdout:

    {"engine": "spark", "bytes": ..., "words": ..., "seconds": ...,
     "words_per_s": ..., ...}

`words` is --words when given (the count `sluice-bench corpus` printed), or
else counted by a batch job after the timed query (untimed). --verify counts
with the batch job even when --words is given and fails on a mismatch.

Memory: `jvm_peak_rss_kb` is the JVM's own VmHWM from /proc (its peak
resident set since it started: heap, metaspace, code cache, thread stacks,
direct buffers), read after the query while the JVM is still up.
`python_peak_rss_kb` is this Python driver's peak (getrusage). No Python
workers run: split/explode/count are JVM expressions.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

# One shuffle partition per core of local[2]. The default, 200, would mean
# 200 tiny reduce tasks and 200 state-store instances (each loaded, updated
# and committed to the checkpoint) per micro-batch, which on two cores is
# pure overhead; the map side already pre-aggregates per task (partial
# HashAggregate), so Zipf hot words do not skew the reduce side, and more
# partitions than cores would only add scheduling and state-store cost.
# It is fixed into the checkpoint of a stateful query, so every run starts
# from a fresh checkpoint directory.
SHUFFLE_PARTITIONS = 2

DEFAULT_PROVIDER = "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider"
ROCKSDB_PROVIDER = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"


def vm_hwm_kb(pid):
    """Peak resident set size (VmHWM) of process `pid` in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def dir_bytes(path):
    return sum(
        os.path.getsize(os.path.join(path, name))
        for name in os.listdir(path)
        if os.path.isfile(os.path.join(path, name)) and not name.startswith((".", "_"))
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="directory holding the corpus file(s)")
    p.add_argument("--words", type=int, help="total words in the corpus (from `sluice-bench corpus`)")
    p.add_argument("--verify", action="store_true", help="count the words with a batch job and compare")
    p.add_argument("--shuffle-partitions", type=int, default=SHUFFLE_PARTITIONS)
    p.add_argument("--work-dir", help="parent of the checkpoint directory (default: a temp dir)")
    p.add_argument(
        "--state-store",
        choices=["default", "rocksdb"],
        default="default",
        help="Spark's state store: the default (HDFS-backed, every key on the heap) or RocksDBStateStoreProvider",
    )
    p.add_argument("--driver-memory", default="1g", help="the JVM's heap (-Xmx), e.g. 4g")
    p.add_argument(
        "--max-files-per-trigger",
        type=int,
        help="files per micro-batch (Spark's maxFilesPerTrigger): a corpus split into 20 files with 1 gives 20 batches; default: all files in one batch",
    )
    args = p.parse_args()

    corpus_dir = os.path.abspath(args.dir)
    nbytes = dir_bytes(corpus_dir)
    if nbytes == 0:
        sys.exit(f"no corpus bytes in {corpus_dir}")

    t0 = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("sluice-bench-wordcount")
        # Passed to spark-submit when pyspark launches the JVM, so it sets -Xmx.
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
        # The UI's listeners and web server are not part of the work measured.
        .config("spark.ui.enabled", "false")
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            ROCKSDB_PROVIDER if args.state_store == "rocksdb" else DEFAULT_PROVIDER,
        )
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    jvm_pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    jvm_max_heap = int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())
    spark_version = spark.version
    startup_s = time.perf_counter() - t0

    work = tempfile.mkdtemp(prefix="spark-wc-", dir=args.work_dir)
    try:
        reader = spark.readStream.format("text")
        if args.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", str(args.max_files_per_trigger))
        lines = reader.load(corpus_dir)
        counts = (
            lines.select(F.explode(F.split(F.col("value"), " ")).alias("word"))
            .groupBy("word")
            .count()
        )
        writer = (
            counts.writeStream.outputMode("update")
            .format("noop")
            .option("checkpointLocation", os.path.join(work, "checkpoint"))
            .trigger(availableNow=True)
        )
        started = time.perf_counter()
        query = writer.start()
        query.awaitTermination()
        seconds = time.perf_counter() - started
        if query.exception() is not None:
            sys.exit(f"query failed: {query.exception()}")
        progress = query.recentProgress
        batches = [b for b in progress if b.get("numInputRows", 0) > 0]
        input_rows = sum(b.get("numInputRows", 0) for b in progress)
        # Read while the JVM is up; VmHWM is a high-water mark, so nothing is missed.
        jvm_hwm = vm_hwm_kb(jvm_pid)

        words = args.words
        if words is None or args.verify:
            counted = (
                spark.read.text(corpus_dir)
                .select(F.explode(F.split(F.col("value"), " ")).alias("word"))
                .count()
            )
            if words is not None and words != counted:
                sys.exit(f"--words {words} but the corpus has {counted} words")
            words = counted
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        json.dumps(
            {
                "engine": "spark",
                "bytes": nbytes,
                "words": words,
                "lines": input_rows,
                "seconds": round(seconds, 3),
                "words_per_s": round(words / seconds),
                "mb_per_s": round(nbytes / seconds / 1e6, 2),
                "micro_batches": len(batches),
                # Each batch with input: Spark's own triggerExecution time.
                "batch_seconds": [round(b["durationMs"]["triggerExecution"] / 1000, 3) for b in batches],
                "startup_seconds": round(startup_s, 3),
                "jvm_peak_rss_kb": jvm_hwm,
                "python_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "jvm_max_heap_bytes": jvm_max_heap,
                "shuffle_partitions": args.shuffle_partitions,
                "state_store": args.state_store,
                "driver_memory": args.driver_memory,
                "max_files_per_trigger": args.max_files_per_trigger,
                "spark_version": spark_version,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
