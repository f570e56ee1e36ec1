-- Browsing sessions per user: a user's clicks less than 10 minutes apart
-- form one session, which ends 10 minutes after its last click. Each
-- session is printed once, when the watermark passes its end, with its
-- clicks and pages; a late click that falls between two open sessions of
-- the same user joins them.
--   sluice produce clicks < clicks.jsonl      # {"user_id": 7, "url": "/home", "ts": "2026-11-21 10:00:01.250"}
--   sluice run jobs/user_sessions.sql [--data-dir D | --brokers host:port] [--until-caught-up]
CREATE STREAM clicks (
  user_id BIGINT,
  url TEXT,
  ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (topic = 'clicks', format = 'json', idle_timeout = '30s');

CREATE SINK sessions WITH (type = 'console', mode = 'append');

INSERT INTO sessions
SELECT user_id, window_start, window_end, count(*) AS clicks, approx_distinct(url) AS pages
FROM SESSION(clicks, ts, INTERVAL '10' MINUTE)
GROUP BY user_id, window_start, window_end;
