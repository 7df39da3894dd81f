-- Validation changes no data and no definition; reverting 010 drops the check.
SELECT 1;
