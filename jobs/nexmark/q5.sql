-- Nexmark q5, hot items: the auction with the most bids in every
-- 10-second window sliding by 2 seconds. The inner aggregation counts
-- bids per auction and window (its state merged across batches, windows
-- closed by the watermark); in append mode each closed window arrives
-- whole, so the outer aggregation picks its top auction per batch.
-- Flink's version joins the counts with each window's maximum and returns
-- every auction tied for it; here it is one of them (first_value).
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q5.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q5 WITH (type = 'blackhole', mode = 'append');

INSERT INTO nexmark_q5
SELECT window_start, window_end, max(num) AS num,
       first_value(auction ORDER BY num DESC) AS auction
FROM (
  SELECT auction, count(*) AS num, window_start, window_end
  FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
  GROUP BY auction, window_start, window_end
)
GROUP BY window_start, window_end;
