-- received_at is when the database received the record: the start of the group commit's
-- transaction, filled in by PostgreSQL. The service no longer sends it with every row
-- (a timestamp per record was a large share of the COPY's encoding cost).
ALTER TABLE usage_records ALTER COLUMN received_at SET DEFAULT now();
