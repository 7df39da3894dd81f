-- Validation changes no data and no definition; reverting 020 drops the foreign keys.
SELECT 1;
