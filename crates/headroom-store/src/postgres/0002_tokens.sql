-- Service and subject tokens, shared by every node: their records as JSON
-- (the SHA-256 hash of the token, never the token itself).
CREATE TABLE tokens (
    id text PRIMARY KEY,
    record text NOT NULL
);
