-- Nexmark q0, pass through: every bid, unchanged, into a sink that discards
-- it (Flink's `blackhole` connector, as in the Nexmark suite). Measures
-- reading and decoding the stream, the floor under every other query.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q0.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q0 WITH (type = 'blackhole');

INSERT INTO nexmark_q0
SELECT auction, bidder, price, date_time, extra FROM bid;
