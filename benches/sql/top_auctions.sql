-- Benchmark: a top-N over an aggregation's groups (Flink's Top-N over a
-- GROUP BY): the ten auctions with the most bids so far. Run beside
-- group_bids.sql (the same aggregation without the ranking):
--   farm-bench -n 3 --timeout 900 --vs 'sh -c "sluice run benches/sql/group_bids.sql --data-dir $TMPDIR/nxr --until-caught-up --quiet --checkpoint-dir $(mktemp -d)"' \
--     -- sh -c 'sluice run benches/sql/top_auctions.sql --data-dir $TMPDIR/nxr --until-caught-up --quiet --checkpoint-dir $(mktemp -d)'
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK out WITH (type = 'blackhole');

INSERT INTO out
SELECT rank_number, auction, bids
FROM (
  SELECT auction, bids, ROW_NUMBER() OVER (ORDER BY bids DESC) AS rank_number
  FROM (SELECT auction, count(*) AS bids FROM bid GROUP BY auction)
)
WHERE rank_number <= 10;
