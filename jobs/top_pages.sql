-- The five most clicked pages so far, kept in a table keyed by rank:
-- a top-N over an aggregation (Flink's Top-N over a GROUP BY). As counts
-- grow a page climbs into the top five and another falls out; each batch
-- writes only the ranks whose page or count changed.
--   sluice produce clicks < clicks.jsonl      # {"user_id": 7, "url": "/home", "ts": "2026-11-21 10:00:01.250"}
--   sluice run jobs/top_pages.sql [--until-caught-up]
--   sluice state scan --job top_pages --table top_pages
CREATE STREAM clicks (
  user_id BIGINT,
  url TEXT,
  ts TIMESTAMP
) WITH (topic = 'clicks', format = 'json');

CREATE SINK top_pages WITH (type = 'table');

INSERT INTO top_pages
SELECT rank, url, clicks
FROM (
  SELECT url, clicks, ROW_NUMBER() OVER (ORDER BY clicks DESC, url) AS rank
  FROM (SELECT url, count(*) AS clicks FROM clicks GROUP BY url)
)
WHERE rank <= 5;
