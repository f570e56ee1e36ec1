-- Nexmark q4, average price per category: the winning bid of each auction
-- (its highest bid made while it was open, over a regular join bounded by
-- state_ttl as q9), averaged per category. An aggregation over an
-- updating aggregation: when an auction's highest bid rises, its old
-- final price is retracted from its category's average and the new one
-- added. An update stream keyed by the category.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q4.sql --until-caught-up
SET 'max_records_per_batch' = '20000';

CREATE STREAM auction (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT,
                       reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT,
                       category BIGINT, extra TEXT,
                       WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'auction', format = 'json');

CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q4 WITH (type = 'blackhole', state_ttl = '1d');

INSERT INTO nexmark_q4
SELECT Q.category, AVG(Q.final) AS avg_final
FROM (
  SELECT MAX(B.price) AS final, A.category
  FROM auction A, bid B
  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
  GROUP BY A.id, A.category
) Q
GROUP BY Q.category;
