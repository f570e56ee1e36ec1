#!/usr/bin/env python3
"""kafka-python's transactional producer against `sluice broker`: three
transactions into TOPIC (partition 0) — committed, aborted, committed — then
the topic read back by a read_committed and a read_uncommitted consumer.

Usage: transactions.py BOOTSTRAP TOPIC

Prints one JSON object on stdout:
  {"read_committed": [value, ...], "read_uncommitted": [value, ...]}
in offset order. Every wait is bounded; exits non-zero with a message on
stderr on failure.
"""

import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

DEADLINE_S = 30


def produce(bootstrap, topic):
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id="kafka-python-txn",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=10000,
        max_block_ms=10000,
        client_id="sluice-test-kafka-python",
    )
    producer.init_transactions()
    for name, commit in (("first", True), ("aborted", False), ("second", True)):
        producer.begin_transaction()
        futures = [
            producer.send(topic, partition=0, value=("%s-%d" % (name, i)).encode())
            for i in range(4)
        ]
        producer.flush(timeout=DEADLINE_S)
        for f in futures:
            f.get(timeout=DEADLINE_S)
        if commit:
            producer.commit_transaction()
        else:
            producer.abort_transaction()
    producer.close(timeout=10)


def read(bootstrap, topic, isolation):
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation,
        fetch_max_wait_ms=100,
        request_timeout_ms=15000,
        client_id="sluice-test-kafka-python",
    )
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    values = []
    deadline = time.monotonic() + DEADLINE_S
    while consumer.position(tp) < end:
        if time.monotonic() > deadline:
            sys.exit("%s reader stuck at %d of %d" % (isolation, consumer.position(tp), end))
        for _tp, records in consumer.poll(timeout_ms=200).items():
            values.extend(r.value.decode() for r in records)
    # Anything more would be a duplicate or an aborted record showing late.
    extra_until = time.monotonic() + 0.5
    while time.monotonic() < extra_until:
        for _tp, records in consumer.poll(timeout_ms=100).items():
            values.extend(r.value.decode() for r in records)
    consumer.close()
    return values


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    produce(bootstrap, topic)
    print(
        json.dumps(
            {
                "read_committed": read(bootstrap, topic, "read_committed"),
                "read_uncommitted": read(bootstrap, topic, "read_uncommitted"),
            }
        )
    )


if __name__ == "__main__":
    main()
