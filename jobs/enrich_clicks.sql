-- Stream–table join: clicks enriched with a static users table (read once
-- at start from CSV), clicks per country kept in a result table.
--   sluice produce clicks < clicks.jsonl      # {"user_id": 7, "url": "/home", "ts": "2026-11-21 10:00:01.250"}
--   sluice run jobs/enrich_clicks.sql [--data-dir D] [--until-caught-up]   # from the repository root (the CSV path is relative)
--   sluice state scan --job enrich_clicks --table clicks_by_country
CREATE STREAM clicks (user_id BIGINT, url TEXT, ts TIMESTAMP)
  WITH (topic = 'clicks', format = 'json');

CREATE TABLE users (user_id BIGINT, name TEXT, country TEXT)
  WITH (path = 'jobs/data/users.csv', format = 'csv', header = 'true');

CREATE SINK clicks_by_country WITH (type = 'table');

INSERT INTO clicks_by_country
SELECT u.country, count(*) AS clicks, approx_distinct(c.user_id) AS users
FROM clicks c JOIN users u ON c.user_id = u.user_id
GROUP BY u.country;
