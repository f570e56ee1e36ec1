-- Nexmark q10, log to file system: every bid into CSV files partitioned by
-- day and minute (Hive's layout: dt=2015-07-15/hm=00%3A00/part-….csv, the
-- partition columns in the path, not in the files), exactly once per
-- batch through the sink's manifest. Flink's filesystem connector rolls
-- files every minute and commits a partition a minute after its time;
-- here every batch writes its own files, listed in out/nexmark_q10/
-- _sluice_manifest/ (the path is relative to the directory the job runs
-- in).
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q10.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q10 WITH (type = 'file', format = 'csv', path = 'out/nexmark_q10',
                              partition_by = 'dt, hm');

INSERT INTO nexmark_q10
SELECT auction, bidder, price, date_time, extra,
       DATE_FORMAT(date_time, 'yyyy-MM-dd') AS dt, DATE_FORMAT(date_time, 'HH:mm') AS hm
FROM bid;
