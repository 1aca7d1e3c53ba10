-- The usage state rating and billing need, checkpointed by the service, so a start loads it
-- and replays only the records committed after the last checkpoint (docs/storage.md).

-- A commit sequence on the usage records: the persister is their only writer and commits
-- one group at a time, so seq order is commit order. Existing records are numbered in the
-- order they were received.
CREATE SEQUENCE usage_records_seq AS bigint;
ALTER TABLE usage_records ADD COLUMN seq bigint;
UPDATE usage_records u SET seq = o.n
FROM (SELECT record_id, row_number() OVER (ORDER BY received_at, record_id) AS n
      FROM usage_records) o
WHERE u.record_id = o.record_id;
SELECT setval('usage_records_seq', coalesce(max(seq), 0) + 1, false) FROM usage_records;
ALTER TABLE usage_records
    ALTER COLUMN seq SET DEFAULT nextval('usage_records_seq'),
    ALTER COLUMN seq SET NOT NULL;
ALTER SEQUENCE usage_records_seq OWNED BY usage_records.seq;
CREATE INDEX usage_records_seq_idx ON usage_records (seq);

-- Running totals per SIM, account period and usage type: what UsageCounters holds.
-- A record is charged when its event time is at or after the SIM's billing start.
-- Quantities are numeric: a sum of int64 quantities can leave int64.
-- seq: the row is exact as of every record with seq <= it (a checkpoint writes its
-- watermark; a settlement writes 9223372036854775807: a settled period's rows are final).
CREATE TABLE usage_aggregates (
    period                 text NOT NULL,     -- the account period "YYYY-MM"
    iccid                  text NOT NULL,
    usage_type             smallint NOT NULL,
    raw_quantity           numeric NOT NULL,
    charged_raw_quantity   numeric NOT NULL,
    charged_rated_quantity numeric NOT NULL,
    records                bigint NOT NULL,
    charged_records        bigint NOT NULL,
    seq                    bigint NOT NULL,
    PRIMARY KEY (period, iccid, usage_type)
);

-- The watermark of the last checkpoint: usage_aggregates holds every record with seq <= it
-- (a start replays the records after it).
CREATE TABLE usage_checkpoint (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    watermark bigint NOT NULL
);

-- Records before billing start of SIMs on FIRST_USE plans: first-use detection sums them,
-- and a billing start moved earlier turns some of them into charged usage. Inserted with
-- their records (seq: the seq of the record's commit group); a checkpoint deletes those
-- with seq <= its watermark that its billing starts charge.
CREATE TABLE usage_uncharged (
    iccid          text NOT NULL,
    event_time     timestamptz NOT NULL,
    usage_type     smallint NOT NULL,
    quantity       bigint NOT NULL,
    rated_quantity bigint NOT NULL,
    period         text NOT NULL,
    seq            bigint NOT NULL
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

INSERT INTO usage_checkpoint (watermark) SELECT coalesce(max(seq), 0) FROM usage_records;

INSERT INTO usage_aggregates
SELECT u.period, u.iccid, u.usage_type,
       sum(u.quantity),
       coalesce(sum(u.quantity) FILTER (WHERE u.event_time >= s.billing_started_at), 0),
       coalesce(sum(u.rated_quantity) FILTER (WHERE u.event_time >= s.billing_started_at), 0),
       count(*),
       count(*) FILTER (WHERE u.event_time >= s.billing_started_at),
       CASE WHEN EXISTS (SELECT 1 FROM invoices i
                         WHERE i.account_id = s.account_id AND i.period = u.period)
            THEN 9223372036854775807
            ELSE (SELECT watermark FROM usage_checkpoint) END
FROM usage_records u JOIN sims s ON s.iccid = u.iccid
GROUP BY u.period, u.iccid, u.usage_type, s.account_id;

INSERT INTO usage_uncharged
SELECT u.iccid, u.event_time, u.usage_type, u.quantity, u.rated_quantity, u.period, u.seq
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
