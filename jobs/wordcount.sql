-- Word count in SQL: the same job as jobs/wordcount.rs.
--   sluice run jobs/wordcount.sql [--data-dir D | --brokers host:port] [--until-caught-up]
--   sluice state scan --job wordcount --table counts --top 10
CREATE STREAM lines (line TEXT) WITH (topic = 'lines', format = 'text');

CREATE SINK counts WITH (type = 'table');

INSERT INTO counts
SELECT word, count(*) AS n
FROM (SELECT unnest(split(line, ' ')) AS word FROM lines)
WHERE word <> ''
GROUP BY word;
