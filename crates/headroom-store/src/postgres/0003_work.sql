-- When an account next has alerts to deliver or a recharge to charge: the
-- nodes' workers find due accounts through the partial index.
ALTER TABLE accounts ADD COLUMN work_at int8;
CREATE INDEX accounts_work ON accounts (work_at) WHERE work_at IS NOT NULL;
