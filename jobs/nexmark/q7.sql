-- Nexmark q7, highest bid: the bids of every 10-second tumbling window
-- with the window's highest price — all of them when several tie —,
-- emitted once when the watermark closes the window. Flink's version
-- joins the bids with each window's maximum price; here a window Top-N
-- ranks each window's bids (RANK() keeps every tie), as Flink's window
-- Top-N does, keeping only the best bids of each open window in state.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q7.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q7 WITH (type = 'blackhole', mode = 'append');

INSERT INTO nexmark_q7
SELECT auction, price, bidder, date_time, extra, window_start, window_end
FROM (
  SELECT auction, price, bidder, date_time, extra, window_start, window_end,
         RANK() OVER (PARTITION BY window_start, window_end ORDER BY price DESC) AS rk
  FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
) WHERE rk <= 1;
