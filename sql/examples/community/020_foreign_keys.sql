-- Foreign keys, added NOT VALID: new and changed rows are checked from now on, and the brief
-- SHARE ROW EXCLUSIVE locks do not wait for a scan. 021 validates the existing rows.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
ALTER TABLE user_community_stats ADD CONSTRAINT user_community_stats_user_fk
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE posts ADD CONSTRAINT posts_user_fk
    FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;
ALTER TABLE post_reactions ADD CONSTRAINT post_reactions_post_fk
    FOREIGN KEY (post_id) REFERENCES posts (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE post_reactions ADD CONSTRAINT post_reactions_user_fk
    FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;
