#!/usr/bin/env python3
"""kafka-python consumer-group member for `sluice broker`.

Usage: group_consume.py BOOTSTRAP TOPIC GROUP LIMIT
  LIMIT > 0: consume exactly LIMIT records, commit their offsets
             synchronously, close (leaving the group).
  LIMIT = 0: consume until nothing new arrives for 3 s, commit, close.

Prints one JSON object on stdout:
  {"consumed": [[partition, offset, value], ...],
   "committed": {"PARTITION": offset, ...}}   # as read back after the commit
Every wait is bounded (30 s); exits non-zero with a message on failure.
"""

import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition

DEADLINE_S = 30
IDLE_S = 3


def main():
    bootstrap, topic, group, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
        fetch_max_wait_ms=100,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        request_timeout_ms=15000,
        client_id="sluice-test-kafka-python-group",
    )
    consumed = []
    deadline = time.monotonic() + DEADLINE_S
    last_record = time.monotonic()
    while True:
        now = time.monotonic()
        if limit > 0 and len(consumed) >= limit:
            break
        if limit == 0 and consumed and now - last_record > IDLE_S:
            break
        if now > deadline:
            if limit > 0:
                sys.exit("consumed only %d of %d records" % (len(consumed), limit))
            break
        for _tp, records in consumer.poll(timeout_ms=200, max_records=1).items():
            for r in records:
                consumed.append([r.partition, r.offset, r.value.decode()])
                last_record = time.monotonic()
    # Commits the position of every assigned partition: one past the last
    # record handed out (max_poll_records=1: nothing consumed beyond LIMIT).
    consumer.commit()
    committed = {}
    for p in sorted(consumer.partitions_for_topic(topic) or []):
        c = consumer.committed(TopicPartition(topic, p))
        if c is not None:
            committed[str(p)] = c
    consumer.close()
    print(json.dumps({"consumed": consumed, "committed": committed}))


if __name__ == "__main__":
    main()
