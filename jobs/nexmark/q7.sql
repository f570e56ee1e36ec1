-- Nexmark q7, highest bid: the highest bid of every 10-second tumbling
-- window, emitted once when the watermark closes the window. Flink's
-- version joins the bids with each window's maximum price; here the bid
-- comes from first_value(… ORDER BY price DESC) in the same aggregation
-- (one bid per window when several tie on the maximum).
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q7.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q7 WITH (type = 'blackhole', mode = 'append');

INSERT INTO nexmark_q7
SELECT window_start, window_end, max(price) AS price,
       first_value(auction ORDER BY price DESC) AS auction,
       first_value(bidder ORDER BY price DESC) AS bidder,
       first_value(date_time ORDER BY price DESC) AS date_time,
       first_value(extra ORDER BY price DESC) AS extra
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
GROUP BY window_start, window_end;
