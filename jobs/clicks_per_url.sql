-- Clicks per URL in 1-minute tumbling windows of event time, each window
-- emitted once, when the watermark (the newest click minus 5 seconds,
-- per partition) has passed its end. Clicks later than that are dropped
-- and counted in the progress line. Users are counted exactly: each
-- window keeps the ids it has seen until the watermark closes it.
--   sluice produce clicks < clicks.jsonl      # {"user_id": 7, "url": "/home", "ts": "2026-11-21 10:00:01.250"}
--   sluice run jobs/clicks_per_url.sql [--data-dir D | --brokers host:port] [--until-caught-up]
CREATE STREAM clicks (
  user_id BIGINT,
  url TEXT,
  ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (topic = 'clicks', format = 'json', idle_timeout = '30s');

CREATE SINK per_minute WITH (type = 'console', mode = 'append');

INSERT INTO per_minute
SELECT window_start, window_end, url, count(*) AS clicks, count(DISTINCT user_id) AS users
FROM TUMBLE(clicks, ts, INTERVAL '1' MINUTE)
GROUP BY window_start, window_end, url;
