#!/usr/bin/env python3
"""kafka-python against `sluice broker`: produce keyed records with acks=all,
then read the topic back from the beginning by explicit assignment.

Usage: produce_consume.py BOOTSTRAP TOPIC COUNT

Prints one JSON object on stdout:
  {"produced": [[partition, offset, key, value], ...],   # from the acks
   "consumed": [[partition, offset, key, value], ...]}   # in arrival order
Every wait is bounded; exits non-zero with a message on stderr on failure.
"""

import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

DEADLINE_S = 30


def main():
    bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        request_timeout_ms=10000,
        max_block_ms=10000,
        client_id="sluice-test-kafka-python",
    )
    futures = []
    for i in range(count):
        key = "key-%d" % (i % 7)
        value = "kafka-python %d" % i
        futures.append((key, value, producer.send(topic, key=key.encode(), value=value.encode())))
    produced = []
    for key, value, f in futures:
        md = f.get(timeout=DEADLINE_S)
        produced.append([md.partition, md.offset, key, value])
    producer.flush(timeout=DEADLINE_S)
    producer.close(timeout=10)

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        request_timeout_ms=15000,
        client_id="sluice-test-kafka-python",
    )
    partitions = consumer.partitions_for_topic(topic)
    deadline = time.monotonic() + DEADLINE_S
    while not partitions:
        if time.monotonic() > deadline:
            sys.exit("no metadata for topic %s" % topic)
        time.sleep(0.1)
        partitions = consumer.partitions_for_topic(topic)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    consumed = []
    while len(consumed) < count:
        if time.monotonic() > deadline:
            sys.exit("consumed only %d of %d records" % (len(consumed), count))
        for _tp, records in consumer.poll(timeout_ms=200).items():
            for r in records:
                consumed.append([r.partition, r.offset, r.key.decode(), r.value.decode()])
    # Anything beyond COUNT would be a duplicate: give it a moment to show up.
    extra_until = time.monotonic() + 0.5
    while time.monotonic() < extra_until:
        for _tp, records in consumer.poll(timeout_ms=100).items():
            for r in records:
                consumed.append([r.partition, r.offset, r.key.decode(), r.value.decode()])
    consumer.close()
    print(json.dumps({"produced": produced, "consumed": consumed}))


if __name__ == "__main__":
    main()
