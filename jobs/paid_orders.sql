-- Stream–stream interval join: orders paid within 10 seconds of being
-- placed. Each stream's rows wait in the job's state until the other
-- stream's watermark says nothing more can match them.
--   sluice produce orders < orders.jsonl       # {"id": 1, "ts": "2026-11-21 10:00:00"}
--   sluice produce payments < payments.jsonl   # {"order_id": 1, "amount": 250, "ts": "2026-11-21 10:00:04"}
--   sluice run jobs/paid_orders.sql [--until-caught-up]
--   sluice state scan --job paid_orders --table paid
CREATE STREAM orders (id BIGINT, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH (topic = 'orders', format = 'json');

CREATE STREAM payments (order_id BIGINT, amount BIGINT, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH (topic = 'payments', format = 'json');

CREATE SINK paid WITH (type = 'table');

INSERT INTO paid
SELECT o.id, p.amount FROM orders o JOIN payments p
  ON o.id = p.order_id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '10' SECOND;
