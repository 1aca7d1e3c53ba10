-- The usage state rating and billing need, kept by the group commit in its own transaction,
-- so a start loads it instead of replaying every usage record (docs/storage.md).

-- Running totals per SIM, account period and usage type: what UsageCounters holds.
-- A record is charged when its event time is at or after the SIM's billing start.
-- Quantities are numeric: a sum of int64 quantities can leave int64.
CREATE TABLE usage_aggregates (
    period                 text NOT NULL,     -- the account period "YYYY-MM"
    iccid                  text NOT NULL,
    usage_type             smallint NOT NULL,
    raw_quantity           numeric NOT NULL,
    charged_raw_quantity   numeric NOT NULL,
    charged_rated_quantity numeric NOT NULL,
    records                bigint NOT NULL,
    charged_records        bigint NOT NULL,
    PRIMARY KEY (period, iccid, usage_type)
);

-- Records before billing start of SIMs on FIRST_USE plans: first-use detection sums them,
-- and a billing start moved earlier turns some of them into charged usage (then they are
-- deleted here and added to the charged columns of usage_aggregates).
CREATE TABLE usage_uncharged (
    iccid          text NOT NULL,
    event_time     timestamptz NOT NULL,
    usage_type     smallint NOT NULL,
    quantity       bigint NOT NULL,
    rated_quantity bigint NOT NULL,
    period         text NOT NULL
);
CREATE INDEX usage_uncharged_sim_idx ON usage_uncharged (iccid, event_time);

-- Raw quantity per SIM and usage type of its settled periods (first-use progress shows the
-- SIM's lifetime total): settling a period adds that period's raw quantities here, in the
-- invoice's transaction, so a start need not read settled periods.
CREATE TABLE sim_settled_usage (
    iccid        text NOT NULL,
    usage_type   smallint NOT NULL,
    raw_quantity numeric NOT NULL,
    PRIMARY KEY (iccid, usage_type)
);

INSERT INTO usage_aggregates
SELECT u.period, u.iccid, u.usage_type,
       sum(u.quantity),
       coalesce(sum(u.quantity) FILTER (WHERE u.event_time >= s.billing_started_at), 0),
       coalesce(sum(u.rated_quantity) FILTER (WHERE u.event_time >= s.billing_started_at), 0),
       count(*),
       count(*) FILTER (WHERE u.event_time >= s.billing_started_at)
FROM usage_records u JOIN sims s ON s.iccid = u.iccid
GROUP BY u.period, u.iccid, u.usage_type;

INSERT INTO usage_uncharged
SELECT u.iccid, u.event_time, u.usage_type, u.quantity, u.rated_quantity, u.period
FROM usage_records u
JOIN sims s ON s.iccid = u.iccid
JOIN plans p ON p.plan_id = s.plan_id
WHERE p.body ->> 'activation_mode' = 'FIRST_USE'
  AND (s.billing_started_at IS NULL OR u.event_time < s.billing_started_at);

INSERT INTO sim_settled_usage
SELECT a.iccid, a.usage_type, sum(a.raw_quantity)
FROM usage_aggregates a
JOIN sims s ON s.iccid = a.iccid
JOIN invoices i ON i.account_id = s.account_id AND i.period = a.period
GROUP BY a.iccid, a.usage_type;
