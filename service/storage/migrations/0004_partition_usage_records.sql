-- usage_records partitioned by period (LIST, one partition per period name "YYYY-MM",
-- named usage_records_pYYYY_MM): the open periods' indexes stay small and hot, and an
-- archived period leaves by dropping its partition (docs/storage.md). The service creates
-- the partition of a new period before the first group commit that needs it
-- (service/storage/partitions.py); there is no DEFAULT partition.
--
-- A unique key of a partitioned table must hold the partition key: (record_id, period).
-- record_id leads, so a look-up by id alone still probes each partition's index.

-- The commit sequence (0003) outlives the old table: it moves to the new one.
ALTER SEQUENCE usage_records_seq OWNED BY NONE;
ALTER TABLE usage_records RENAME TO usage_records_unpartitioned;
ALTER INDEX usage_records_pkey RENAME TO usage_records_unpartitioned_pkey;
ALTER INDEX usage_records_sim_time_idx RENAME TO usage_records_unpartitioned_sim_time_idx;
ALTER INDEX usage_records_seq_idx RENAME TO usage_records_unpartitioned_seq_idx;

CREATE TABLE usage_records (
    record_id      text NOT NULL,
    iccid          text NOT NULL,
    usage_type     smallint NOT NULL,         -- service.domain.model.UsageType value
    quantity       bigint NOT NULL CHECK (quantity >= 0),
    rated_quantity bigint NOT NULL,
    event_time     timestamptz NOT NULL,
    session_id     text NOT NULL DEFAULT '',
    period         text NOT NULL,             -- the account period "YYYY-MM" of event_time
    received_at    timestamptz NOT NULL DEFAULT now(),
    seq            bigint NOT NULL DEFAULT nextval('usage_records_seq')  -- commit order (0003)
) PARTITION BY LIST (period);
ALTER SEQUENCE usage_records_seq OWNED BY usage_records.seq;

DO $$
DECLARE
    p text;
BEGIN
    FOR p IN SELECT DISTINCT period FROM usage_records_unpartitioned ORDER BY 1 LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF usage_records FOR VALUES IN (%L)',
            'usage_records_p' || replace(p, '-', '_'), p
        );
    END LOOP;
END $$;

-- Rows first, indexes after: building an index once is faster than maintaining it per row.
INSERT INTO usage_records (record_id, iccid, usage_type, quantity, rated_quantity, event_time,
                           session_id, period, received_at, seq)
SELECT record_id, iccid, usage_type, quantity, rated_quantity, event_time,
       session_id, period, received_at, seq
FROM usage_records_unpartitioned;

ALTER TABLE usage_records ADD PRIMARY KEY (record_id, period);
CREATE INDEX usage_records_sim_time_idx ON usage_records (iccid, event_time);
CREATE INDEX usage_records_seq_idx ON usage_records (seq);

DO $$
DECLARE
    before bigint := (SELECT count(*) FROM usage_records_unpartitioned);
    after bigint := (SELECT count(*) FROM usage_records);
BEGIN
    IF before <> after THEN
        RAISE EXCEPTION 'usage_records: % rows before partitioning, % after', before, after;
    END IF;
END $$;

DROP TABLE usage_records_unpartitioned;
