-- Nexmark q2, selection: the bids on every 123rd auction, as in Flink's and
-- RisingWave's Nexmark. (The original query picks auctions 1007, 1020,
-- 2001, 2019 and 2087, which yields only a few hundred rows however long
-- the stream.)
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q2.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q2 WITH (type = 'blackhole');

INSERT INTO nexmark_q2
SELECT auction, price FROM bid WHERE auction % 123 = 0;
