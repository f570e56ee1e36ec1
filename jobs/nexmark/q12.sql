-- Nexmark q12, processing-time windows: bids per bidder in 10-second
-- windows of processing time. `p_time AS PROCTIME()` is Flink's
-- processing-time attribute; in a micro-batch engine every record of a
-- batch is processed at the batch's time, so that is its p_time, and the
-- stream's watermark is the batch's time: a window closes (append mode)
-- in the first batch at or after its end, records or not. Results depend
-- on when the job runs, as Flink's do.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q12.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT, p_time AS PROCTIME())
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q12 WITH (type = 'blackhole', mode = 'append');

INSERT INTO nexmark_q12
SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM TUMBLE(bid, p_time, INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end;
