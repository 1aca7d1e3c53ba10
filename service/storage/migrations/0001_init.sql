-- Catalog, SIMs, usage and invoices. Money in integer micros, quantities in base units.

CREATE TABLE plans (
    plan_id     text PRIMARY KEY,
    currency    text NOT NULL,
    body        jsonb NOT NULL,          -- the immutable plan, as service.storage.codec writes it
    created_at  timestamptz NOT NULL
);

CREATE TABLE accounts (
    account_id  text PRIMARY KEY,
    currency    text NOT NULL,
    timezone    text NOT NULL,
    billing_day smallint NOT NULL CHECK (billing_day BETWEEN 1 AND 28),
    commitment_schedule jsonb NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE sims (
    iccid                text PRIMARY KEY,
    account_id           text NOT NULL REFERENCES accounts (account_id),
    plan_id              text NOT NULL REFERENCES plans (plan_id),
    provisioned_at       timestamptz NOT NULL,
    state                smallint NOT NULL,     -- service.domain.model.SimState value
    billing_started_at   timestamptz,
    billing_start_reason smallint,             -- service.domain.model.BillingStartReason value
    suspended_at         timestamptz,
    terminated_at        timestamptz
);
CREATE INDEX sims_account_idx ON sims (account_id);

-- One row per accepted usage record; record_id is the idempotency key, forever.
CREATE TABLE usage_records (
    record_id      text PRIMARY KEY,
    iccid          text NOT NULL,
    usage_type     smallint NOT NULL,         -- service.domain.model.UsageType value
    quantity       bigint NOT NULL CHECK (quantity >= 0),
    rated_quantity bigint NOT NULL,
    event_time     timestamptz NOT NULL,
    session_id     text NOT NULL DEFAULT '',
    period         text NOT NULL,             -- the account period "YYYY-MM" of event_time
    received_at    timestamptz NOT NULL
);
CREATE INDEX usage_records_sim_time_idx ON usage_records (iccid, event_time);

-- A settled account-period: written once, in one transaction, never changed.
CREATE TABLE invoices (
    account_id   text NOT NULL REFERENCES accounts (account_id),
    period       text NOT NULL,             -- "YYYY-MM"
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    currency     text NOT NULL,
    total_micros bigint NOT NULL,
    body         jsonb NOT NULL,            -- lines and the per-SIM breakdown
    settled_at   timestamptz NOT NULL,
    PRIMARY KEY (account_id, period)
);
