-- Nexmark q19, auction top-10 price: the ten highest bids of each auction
-- (Flink's Top-N). An update stream keyed by (auction, rank_number): a
-- bid that enters the top ten re-emits the ranks it pushes down; bids of
-- one price rank by arrival. Each auction keeps ten rows in the state.
-- The outer SELECT names the bid's columns (Flink: SELECT *; Sluice's *
-- also has the stream's _topic, _partition, _offset, … columns).
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q19.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q19 WITH (type = 'blackhole');

INSERT INTO nexmark_q19
SELECT auction, bidder, price, channel, url, date_time, extra, rank_number FROM
(SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number FROM bid)
WHERE rank_number <= 10;
