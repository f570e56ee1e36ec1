// KafkaJS (a pure-JavaScript client) transactions against `sluice broker`:
// committed, aborted, committed into partition 0 of TOPIC, then read back by
// a read_committed and a read_uncommitted consumer group.
//
// Usage: NODE_PATH=... node kafkajs_transactions.js BOOTSTRAP TOPIC
// Prints {"read_committed": [...], "read_uncommitted": [...]}; every wait is bounded.
const { Kafka, logLevel } = require('kafkajs');
const [bootstrap, topic] = process.argv.slice(2);
const kafka = new Kafka({ clientId: 'sluice-test-kafkajs', brokers: [bootstrap], logLevel: logLevel.ERROR });

async function read(readUncommitted, expected) {
  const consumer = kafka.consumer({ groupId: `kjs-${readUncommitted}`, readUncommitted, maxWaitTimeInMs: 100 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const values = [];
  await consumer.run({ eachMessage: async ({ message }) => { values.push(message.value.toString()); } });
  const deadline = Date.now() + 20000;
  while (values.length < expected && Date.now() < deadline) await new Promise(r => setTimeout(r, 100));
  await new Promise(r => setTimeout(r, 500));
  await consumer.disconnect();
  return values;
}

(async () => {
  const producer = kafka.producer({ transactionalId: 'kafkajs-txn', idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  for (const [name, commit] of [['first', true], ['aborted', false], ['second', true]]) {
    const txn = await producer.transaction();
    await txn.send({ topic, messages: [0, 1, 2, 3].map(i => ({ partition: 0, value: `${name}-${i}` })) });
    if (commit) await txn.commit(); else await txn.abort();
  }
  await producer.disconnect();
  const committed = await read(false, 8);
  const everything = await read(true, 12);
  console.log(JSON.stringify({ read_committed: committed, read_uncommitted: everything }));
})().catch(e => { console.error(e); process.exit(1); });
