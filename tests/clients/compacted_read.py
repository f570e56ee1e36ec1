#!/usr/bin/env python3
"""kafka-python reading a compacted topic of `sluice broker` from the
beginning: gaps in the offsets and batches the cleaner emptied must not
stop it before the end of the log.

Usage: compacted_read.py BOOTSTRAP TOPIC PARTITIONS

Prints one JSON object on stdout:
  {"records": [[partition, offset, key, value-or-null], ...],
   "end": {partition: end offset}}
Every wait is bounded; exits non-zero with a message on stderr on failure.
"""

import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition

DEADLINE_S = 30


def main():
    bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        request_timeout_ms=15000,
        client_id="sluice-test-kafka-python-compacted",
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    records = []
    deadline = time.monotonic() + DEADLINE_S
    while any(consumer.position(tp) < end[tp] for tp in tps):
        if time.monotonic() > deadline:
            positions = {tp.partition: consumer.position(tp) for tp in tps}
            sys.exit("stuck before the end: positions %s, end %s" % (positions, end))
        for tp, msgs in consumer.poll(timeout_ms=200).items():
            for m in msgs:
                value = None if m.value is None else m.value.decode()
                records.append([tp.partition, m.offset, m.key.decode(), value])
    consumer.close()
    print(json.dumps({"records": records, "end": {tp.partition: end[tp] for tp in tps}}))


if __name__ == "__main__":
    main()
