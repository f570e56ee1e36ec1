-- Benchmark: OVER aggregates over a stream (Flink's OVER aggregation) on
-- Nexmark's bids, each bid emitted once when the watermark passes it.
-- Run beside group_bids.sql (the same bids aggregated, no window) on
-- events spread over 100 s of event time, so the watermark moves:
--   sluice nexmark generate --events 10000000 --rate 100000 --data-dir $TMPDIR/nxr
--   farm-bench -n 3 --timeout 900 --vs 'sh -c "sluice run benches/sql/group_bids.sql --data-dir $TMPDIR/nxr --until-caught-up --quiet --checkpoint-dir $(mktemp -d)"' \
--     -- sh -c 'sluice run benches/sql/over_bids.sql --data-dir $TMPDIR/nxr --until-caught-up --quiet --checkpoint-dir $(mktemp -d)'
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK out WITH (type = 'blackhole');

INSERT INTO out
SELECT auction, price,
       avg(price) OVER (PARTITION BY auction ORDER BY date_time
                        ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_last_11,
       count(*) OVER (PARTITION BY auction ORDER BY date_time
                      RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW) AS bids_10s
FROM bid;
