-- Nexmark q20, expanded bids: every bid on an auction of category 10 with
-- the auction's fields. A regular join of two streams, bounded by
-- state_ttl as q3 (rows kept a day of processing time). Each stream's
-- rows are buffered by join key, so a batch reads back only the auctions
-- of its bids' auctions (and the bids of its new auctions).
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q20.sql --until-caught-up
-- Batches of 20,000 records per partition keep its peak under 1 GiB
-- (each batch's rows of both streams are buffered; the default 50,000
-- made 1.4 GiB at 10 M events, at the same CPU time).
SET 'max_records_per_batch' = '20000';

CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE STREAM auction (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT,
                       reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT,
                       category BIGINT, extra TEXT,
                       WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'auction', format = 'json');

CREATE SINK nexmark_q20 WITH (type = 'blackhole', state_ttl = '1d');

INSERT INTO nexmark_q20
SELECT auction, bidder, price, channel, url, B.date_time AS bid_date_time, B.extra AS bid_extra,
       item_name, description, initial_bid, reserve, A.date_time AS auction_date_time, expires,
       seller, category, A.extra AS auction_extra
FROM bid AS B INNER JOIN auction AS A ON B.auction = A.id
WHERE A.category = 10;
