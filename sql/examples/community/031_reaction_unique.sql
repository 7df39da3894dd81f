-- The constraint, from the index 030 built: instant.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
DO $guard$
BEGIN
    IF NOT (EXISTS (SELECT FROM pg_index WHERE indexrelid = to_regclass('public.post_reactions_unique') AND indisvalid)) THEN
        RAISE EXCEPTION 'index post_reactions_unique is missing or not valid (030)';
    END IF;
END
$guard$;
ALTER TABLE post_reactions
    ADD CONSTRAINT post_reactions_unique UNIQUE USING INDEX post_reactions_unique;
