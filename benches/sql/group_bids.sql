-- Benchmark baseline: the bids per auction, merged across batches (no
-- window); beside over_bids.sql and top_auctions.sql (see their
-- headers for the commands).
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK out WITH (type = 'blackhole');

INSERT INTO out
SELECT auction, count(*) AS bids
FROM bid
GROUP BY auction;
