-- Nexmark q18, find last bid: each bidder's last bid on each auction
-- (Flink's deduplication: ROW_NUMBER() … ORDER BY date_time DESC, kept
-- where it is 1). An update stream keyed by (bidder, auction): a later
-- bid replaces the earlier one; each group keeps one row in the state.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q18.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q18 WITH (type = 'blackhole');

INSERT INTO nexmark_q18
SELECT auction, bidder, price, channel, url, date_time, extra
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rank_number
      FROM bid)
WHERE rank_number <= 1;
