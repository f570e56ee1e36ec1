-- Nexmark q9, winning bids: each auction with its highest bid made while
-- it was open (ties: the earlier bid). A top-1 per auction over a regular
-- join of the two streams, bounded by state_ttl as q3 and q20 (rows kept
-- a day of processing time); an update stream keyed by the auction's id.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q9.sql --until-caught-up
-- Batches of 20,000 records per partition keep its peak under 1 GiB,
-- as q20's.
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

CREATE SINK nexmark_q9 WITH (type = 'blackhole', state_ttl = '1d');

INSERT INTO nexmark_q9
SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category,
       extra, auction, bidder, price, bid_date_time, bid_extra
FROM (
  SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time, B.extra AS bid_extra,
         ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC) AS rownum
  FROM auction A, bid B
  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
)
WHERE rownum <= 1;
