-- Nexmark q6, average selling price by seller: each auction's winning
-- bid (its highest bid made while it was open, ties: the earlier bid)
-- over a regular join bounded by state_ttl as q9, and per seller the
-- average of the final prices of its auction and the 10 before it, in
-- the order the winning bids were made. When an auction's highest bid
-- rises, its row moves in its seller's order and the rows whose last 11
-- auctions changed are updated: an update stream keyed by the auction.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q6.sql --until-caught-up
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

CREATE SINK nexmark_q6 WITH (type = 'blackhole', state_ttl = '1d');

INSERT INTO nexmark_q6
SELECT Q.seller,
       AVG(Q.price) OVER (PARTITION BY Q.seller ORDER BY Q.date_time, Q.id
                          ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_price,
       Q.id AS auction
FROM (
  SELECT id, seller, price, date_time
  FROM (
    SELECT A.id, A.seller, B.price, B.date_time,
           ROW_NUMBER() OVER (PARTITION BY A.id, A.seller
                              ORDER BY B.price DESC, B.date_time ASC) AS rownum
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
  )
  WHERE rownum <= 1
) Q;
