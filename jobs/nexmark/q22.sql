-- Nexmark q22, URL directories: the first three directories of each bid's
-- URL. split_index is Flink's SPLIT_INDEX (pieces from 0).
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q22.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q22 WITH (type = 'blackhole');

INSERT INTO nexmark_q22
SELECT auction, bidder, price, channel,
  split_index(url, '/', 3) AS dir1,
  split_index(url, '/', 4) AS dir2,
  split_index(url, '/', 5) AS dir3
FROM bid;
