-- Nexmark q1, currency conversion: every bid's price from dollars to euros.
-- Flink computes 0.908 * price as DECIMAL(23, 3); here the literal is a
-- DOUBLE (DataFusion's default), so `price` comes out as a DOUBLE.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q1.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q1 WITH (type = 'blackhole');

INSERT INTO nexmark_q1
SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid;
