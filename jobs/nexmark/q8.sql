-- Nexmark q8, monitor new users: people who opened an auction in the same
-- 10-second tumbling window in which they registered, one row per person
-- and window, emitted once when no auction can still join the window.
-- Flink's version joins two windowed GROUP BYs; here the window groups
-- the interval join of the two streams (the same rows). Rows of either
-- stream wait in state until the other stream's watermark passes them.
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q8.sql --until-caught-up
CREATE STREAM person (id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT,
                      state TEXT, date_time TIMESTAMP, extra TEXT,
                      WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'person', format = 'json');

CREATE STREAM auction (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT,
                       reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT,
                       category BIGINT, extra TEXT,
                       WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'auction', format = 'json');

CREATE SINK nexmark_q8 WITH (type = 'blackhole', mode = 'append');

INSERT INTO nexmark_q8
SELECT p.id, p.name, p.window_start AS starttime
FROM TUMBLE(person, date_time, INTERVAL '10' SECOND) p JOIN auction a
  ON p.id = a.seller
 AND date_bin(INTERVAL '10' SECOND, a.date_time) = p.window_start
 AND a.date_time BETWEEN p.date_time - INTERVAL '10' SECOND AND p.date_time + INTERVAL '10' SECOND
GROUP BY p.id, p.name, p.window_start, p.window_end;
