-- Nexmark q5, hot items: the auctions with the most bids in every
-- 10-second window sliding by 2 seconds. The inner aggregation counts
-- bids per auction and window (its state merged across batches, windows
-- closed by the watermark); in append mode each closed window arrives
-- whole, in one batch, and RANK() within the window keeps every auction
-- tied for its most bids — what Flink's join of the counts with each
-- window's maximum returns.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q5.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q5 WITH (type = 'blackhole', mode = 'append');

INSERT INTO nexmark_q5
SELECT auction, num
FROM (
  SELECT auction, num,
         RANK() OVER (PARTITION BY starttime, endtime ORDER BY num DESC) AS rank_number
  FROM (
    SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
    FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
    GROUP BY auction, window_start, window_end
  )
)
WHERE rank_number = 1;
