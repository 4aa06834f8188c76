-- How many patients of a practice have each search prefix, as a whole word
-- of their name (whole: rank 0 or 1) and only as the start of one (partial:
-- rank 2). Kept in the same transaction as patient_prefixes. Search reads it
-- to pick the query word whose rows to scan.
CREATE TABLE prefix_counts (
    practice TEXT COLLATE "C" NOT NULL,
    prefix   TEXT COLLATE "C" NOT NULL,
    whole    BIGINT NOT NULL,
    partial  BIGINT NOT NULL,
    PRIMARY KEY (practice, prefix)
);

INSERT INTO prefix_counts (practice, prefix, whole, partial)
SELECT practice, prefix, SUM(CASE WHEN rank <= 1 THEN 1 ELSE 0 END), SUM(CASE WHEN rank = 2 THEN 1 ELSE 0 END)
FROM patient_prefixes GROUP BY practice, prefix;
