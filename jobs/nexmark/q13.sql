-- Nexmark q13, bounded side input join: every bid with the value of its
-- auction's row (auction mod 10,000) in a static table. Flink joins the
-- side input file FOR SYSTEM_TIME AS OF the bid's processing time; here it
-- is a CREATE TABLE over the same file (Nexmark's SideInputGenerator:
-- 10,000 lines "i,i"), read once when the job starts. Paths are relative
-- to the directory the job runs in (the repository's root here).
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q13.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE TABLE side_input ("key" BIGINT, "value" TEXT)
  WITH (path = 'jobs/data/nexmark_side_input.csv', format = 'csv', header = 'false');

CREATE SINK nexmark_q13 WITH (type = 'blackhole');

INSERT INTO nexmark_q13
SELECT B.auction, B.bidder, B.price, B.date_time, S."value"
FROM bid AS B JOIN side_input AS S ON B.auction % 10000 = S."key";
