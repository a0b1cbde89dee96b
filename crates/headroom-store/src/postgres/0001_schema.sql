-- Headroom's schema. Times are milliseconds since the Unix epoch (UTC),
-- amounts micro-credits, ids as the API shows them (event and decision ids,
-- 128 bits, as uuid). Each `body` is the
-- record as the core produced it (postcard), the columns beside it are for
-- people and indexes. The links between the tables are checked by
-- `headroom reconcile --store`, not by foreign keys: a foreign key check
-- per inserted row would cost more than the rest of a decision.

CREATE TABLE headroom_settings (
    key text PRIMARY KEY,
    value text NOT NULL
);

-- One row per account: its whole state (windows, wallet, reservations),
-- locked by every transaction that changes it. Idempotency keys live in
-- their own table, not in the state.
CREATE TABLE accounts (
    id text PRIMARY KEY,
    state bytea NOT NULL,
    -- The next reservation or grant expiry, when the sweeper advances it.
    due_at int8
) WITH (fillfactor = 50); -- room on each page for updates that touch no index (HOT)
CREATE INDEX accounts_due ON accounts (due_at) WHERE due_at IS NOT NULL;

-- A subject belongs to one account, for good.
CREATE TABLE subjects (
    id text PRIMARY KEY,
    account text NOT NULL
);

CREATE TABLE idempotency_keys (
    account text NOT NULL,
    key text NOT NULL,
    fingerprint bytea NOT NULL,
    expires_at int8 NOT NULL,
    -- The stored answer, returned byte for byte on a replay.
    answer bytea NOT NULL,
    PRIMARY KEY (account, key)
);
-- Keys arrive in about the order they expire (now + retention): a BRIN
-- index finds the expired ones for the cleanup at almost no cost per insert.
CREATE INDEX idempotency_keys_expiry ON idempotency_keys USING brin (expires_at);

-- The three datasets.
CREATE TABLE usage_events (
    id uuid PRIMARY KEY,
    account text NOT NULL,
    decision uuid NOT NULL,
    idempotency_key text NOT NULL,
    subject text NOT NULL,
    feature text NOT NULL,
    quantity int8 NOT NULL,
    window_units int8 NOT NULL,
    at int8 NOT NULL,
    body bytea NOT NULL
);

CREATE TABLE monetization_events (
    id uuid PRIMARY KEY,
    usage_id uuid NOT NULL,
    account text NOT NULL,
    amount int8 NOT NULL,
    write_off int8 NOT NULL,
    at int8 NOT NULL,
    body bytea NOT NULL
);

CREATE TABLE balance_updates (
    id uuid PRIMARY KEY,
    account text NOT NULL,
    sequence int8 NOT NULL,
    source text NOT NULL,
    delta int8 NOT NULL,
    cause text NOT NULL,
    monetization_id uuid,
    settled boolean NOT NULL DEFAULT false,
    at int8 NOT NULL,
    body bytea NOT NULL,
    UNIQUE (account, sequence)
);
CREATE INDEX balance_updates_unsettled ON balance_updates (account, sequence) WHERE NOT settled;

-- Settling a debit that found less than it takes: the part written off.
CREATE TABLE corrections (
    id uuid PRIMARY KEY,
    update_id uuid NOT NULL UNIQUE,
    account text NOT NULL,
    write_off int8 NOT NULL,
    at int8 NOT NULL,
    body bytea NOT NULL
);
