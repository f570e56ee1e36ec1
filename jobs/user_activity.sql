-- Each click with how busy its user was: the user's clicks in the 30
-- seconds up to it and when the first of them was. An OVER aggregation in
-- event time, as Flink's: each click is printed once, when the watermark
-- passes it; the job keeps per user only the clicks a later click's
-- frame can reach (RANGE … PRECEDING; ROWS BETWEEN n PRECEDING works too).
--   sluice produce clicks < clicks.jsonl      # {"user_id": 7, "url": "/home", "ts": "2026-11-21 10:00:01.250"}
--   sluice run jobs/user_activity.sql [--data-dir D | --brokers host:port] [--until-caught-up]
CREATE STREAM clicks (
  user_id BIGINT,
  url TEXT,
  ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (topic = 'clicks', format = 'json', idle_timeout = '30s');

CREATE SINK activity WITH (type = 'console');

INSERT INTO activity
SELECT user_id, url, ts,
       count(*) OVER (PARTITION BY user_id ORDER BY ts
                      RANGE BETWEEN INTERVAL '30' SECOND PRECEDING AND CURRENT ROW) AS clicks_30s,
       min(ts) OVER (PARTITION BY user_id ORDER BY ts
                      RANGE BETWEEN INTERVAL '30' SECOND PRECEDING AND CURRENT ROW) AS since
FROM clicks;
