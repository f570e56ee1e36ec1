-- Nexmark q3, local item suggestion: who sells in category 10 in Oregon,
-- Idaho or California. A regular join of two streams, as Flink's: each
-- person and auction waits in state for its match. Flink keeps them
-- forever (or for its state TTL); here state_ttl on the sink bounds them
-- (rows are kept a day of processing time), which the suite's streams
-- never outlast: without it the job is refused (unbounded state).
--   sluice nexmark generate --events 10000000
--   sluice run jobs/nexmark/q3.sql --until-caught-up
CREATE STREAM auction (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT,
                       reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT,
                       category BIGINT, extra TEXT,
                       WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'auction', format = 'json');

CREATE STREAM person (id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT,
                      state TEXT, date_time TIMESTAMP, extra TEXT,
                      WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'person', format = 'json');

CREATE SINK nexmark_q3 WITH (type = 'blackhole', state_ttl = '1d');

INSERT INTO nexmark_q3
SELECT P.name, P.city, P.state, A.id
FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
