-- Nexmark q14, calculation: bids between 1 M and 50 M euros with the time
-- of day they came in and how many 'c's their extra field holds.
-- count_char is the suite's user function: a Rust job registers it
-- (jobs/nexmark_q14.rs); `sluice run` alone does not know it.
-- 0.908 * price is a DOUBLE (Flink: DECIMAL).
--   sluice nexmark generate --events 10000000
--   cargo run --release --example nexmark_q14 -- --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q14 WITH (type = 'blackhole');

INSERT INTO nexmark_q14
SELECT auction, bidder, 0.908 * price AS price,
  CASE
    WHEN HOUR(date_time) >= 8 AND HOUR(date_time) <= 18 THEN 'dayTime'
    WHEN HOUR(date_time) <= 6 OR HOUR(date_time) >= 20 THEN 'nightTime'
    ELSE 'otherTime'
  END AS bid_time_type,
  date_time, extra, count_char(extra, 'c') AS c_counts
FROM bid
WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000;
