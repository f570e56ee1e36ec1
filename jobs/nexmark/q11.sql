-- Nexmark q11, user sessions: bids per bidder and session, a session
-- ending after 10 seconds without a bid. Flink's SESSION group window;
-- here the SESSION table function, each session emitted once when the
-- watermark passes its end (append mode).
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q11.sql --until-caught-up
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'bid', format = 'json');

CREATE SINK nexmark_q11 WITH (type = 'blackhole', mode = 'append');

INSERT INTO nexmark_q11
SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM SESSION(bid, date_time, INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end;
