"""vitalcast_ingest_new: a live ingest of new samples in one statement (PostgreSQL)

A live sync's ingest was a transaction of four round trips (BEGIN, the user's lock, the insert
that records the change, COMMIT), and on a scaled-out server each round trip is a wake-up of the
event loop. The function is the same transaction in one call, run outside any transaction (a
statement is atomic): it takes the user's row lock first, and every statement after it in the
function sees a snapshot taken after the lock (READ COMMITTED, a VOLATILE function: one
snapshot per statement), as the separate statements did. The lock cannot go into the insert's
own statement: that statement's snapshot would be taken before the lock's wait, and an ingest
that committed during the wait would be missed (wrong ``prev_seq``, a new session not moved).

``vitalcast_ingest_new(user, samples..., complete, all_or_nothing, now_ms, pad, merge_ms,
request_id, body_sha256, status, response_head)``:

- the user's lock (no row: ``user_found`` false, nothing written);
- with a ``request_id`` that was recorded already, nothing is written and the stored request
  is answered (``replay_*``);
- with ``all_or_nothing``, when any sample's identity exists already, nothing is written
  (``written`` false): the caller applies the batch the general way;
- otherwise each new identity and its sample row are inserted, the user's counter moves to
  ``seq + 1`` if any was, and when every sample was new and ``complete`` (the batch writes
  nothing else) the change is recorded as ``ingest.repository.record_change`` records it:
  the watermarks of the sessions whose widest window holds a time of the batch, their
  change-log entries (``sessions.changelog.ranges_of``'s ranges, packed as ``packed_ranges``
  packs them: little-endian int8 pairs), the staleness clock of their cached views;
- with a ``request_id``, when every sample was new, the request is recorded with the answer
  ``response_head || (seq + 1) || '}'`` (the caller's answer up to its change_seq, the last
  key), as ``ingest.repository.record_request`` records it;
- one row per moved session (its columns as read, and its cached views as arrays), or one row
  with the session columns null; ``seq`` is the user's counter as locked, before the move.

The SQL is this revision's: a later change of it is a new revision (``CREATE OR REPLACE``).
``tests/ingest/test_changelog.py`` checks the ranges against ``changelog.ranges_of``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION vitalcast_ingest_new(
    p_user_id text, p_sources text[], p_record_ids text[], p_metrics text[], p_vals float8[],
    p_units text[], p_starts bigint[], p_ends bigint[], p_devices text[],
    p_complete boolean, p_all_or_nothing boolean, p_now_ms bigint, p_pad bigint,
    p_merge_ms bigint, p_request_id text, p_body_sha256 text, p_status integer,
    p_response_head bytea
) RETURNS TABLE (
    user_found boolean, seq bigint, written boolean, recorded boolean,
    inserted_sources text[], inserted_record_ids text[],
    id text, user_id text, client_session_id text, status text, start_ms bigint,
    end_ms bigint, notes text, source_watermark bigint, archived_at_ms bigint,
    windows integer[], resolutions text[], versions integer[],
    replay_sha256 text, replay_status integer, replay_response bytea
) LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_seq bigint;
    v_lo bigint;
    v_hi bigint;
    v_sha256 text;
    v_status integer;
    v_response bytea;
BEGIN
    SELECT u.change_seq INTO v_seq FROM users AS u WHERE u.id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::bigint, false, false, NULL::text[], NULL::text[],
            NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::bigint,
            NULL::text, NULL::bigint, NULL::bigint, NULL::integer[], NULL::text[],
            NULL::integer[], NULL::text, NULL::integer, NULL::bytea;
        RETURN;
    END IF;
    IF p_request_id IS NOT NULL THEN
        SELECT r.body_sha256, r.status_code, r.response INTO v_sha256, v_status, v_response
        FROM ingest_requests AS r
        WHERE r.user_id = p_user_id AND r.request_id = p_request_id;
        IF FOUND THEN
            RETURN QUERY SELECT true, v_seq, false, false, NULL::text[], NULL::text[],
                NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::bigint,
                NULL::text, NULL::bigint, NULL::bigint, NULL::integer[], NULL::text[],
                NULL::integer[], v_sha256::text, v_status, v_response;
            RETURN;
        END IF;
    END IF;
    IF p_all_or_nothing AND EXISTS (
        SELECT 1 FROM sample_identities AS i
        WHERE i.user_id = p_user_id
          AND (i.source, i.record_id) IN (SELECT * FROM unnest(p_sources, p_record_ids))
    ) THEN
        RETURN QUERY SELECT true, v_seq, false, false, NULL::text[], NULL::text[],
            NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::bigint,
            NULL::text, NULL::bigint, NULL::bigint, NULL::integer[], NULL::text[],
            NULL::integer[], NULL::text, NULL::integer, NULL::bytea;
        RETURN;
    END IF;
    SELECT min(x), max(x) INTO v_lo, v_hi FROM unnest(p_starts) AS x;
    RETURN QUERY
    WITH v AS (
        SELECT * FROM unnest(
            p_sources, p_record_ids, p_metrics, p_vals, p_units, p_starts, p_ends, p_devices
        ) AS v(source, record_id, metric, value, unit, start_ms, end_ms, device)
    ), ids AS (
        INSERT INTO sample_identities (user_id, source, record_id, start_ms)
        SELECT p_user_id, v.source, v.record_id, v.start_ms FROM v
        ON CONFLICT DO NOTHING
        RETURNING sample_identities.source, sample_identities.record_id
    ), ins AS (
        INSERT INTO health_samples
            (user_id, source, record_id, metric, value, unit, start_ms, end_ms, device,
             deleted, change_seq)
        SELECT p_user_id, v.source, v.record_id, v.metric, v.value, v.unit,
               v.start_ms, v.end_ms, v.device, false, v_seq + 1
        FROM v JOIN ids ON ids.source = v.source AND ids.record_id = v.record_id
        RETURNING health_samples.source
    ), bump AS (
        UPDATE users SET change_seq = v_seq + 1
        WHERE users.id = p_user_id AND EXISTS (SELECT 1 FROM ins)
    ), got AS (
        SELECT count(*) AS n, array_agg(ids.source::text) AS sources,
               array_agg(ids.record_id::text) AS record_ids
        FROM ids
    ), cand AS (
        SELECT s.* FROM sessions AS s
        WHERE p_complete AND (SELECT got.n FROM got) = cardinality(p_sources)
          AND s.user_id = p_user_id AND s.archived_at_ms IS NULL
          AND s.start_ms - p_pad <= v_hi
          AND coalesce(s.end_ms, p_now_ms) + p_pad > v_lo
    ), hits AS (
        SELECT cand.id AS sid, t.x,
               t.x - lag(t.x) OVER (PARTITION BY cand.id ORDER BY t.x) AS gap
        FROM cand JOIN (SELECT DISTINCT x FROM unnest(p_starts) AS x) AS t
            ON t.x >= cand.start_ms - p_pad
            AND t.x < coalesce(cand.end_ms, p_now_ms) + p_pad
    ), islands AS (
        SELECT hits.sid, hits.x,
               count(*) FILTER (WHERE hits.gap IS NULL OR hits.gap > p_merge_ms)
                   OVER (PARTITION BY hits.sid ORDER BY hits.x) AS k
        FROM hits
    ), spans AS (
        SELECT islands.sid, islands.k, min(islands.x) AS lo, max(islands.x) + 1 AS hi
        FROM islands GROUP BY islands.sid, islands.k
    ), packed AS (
        SELECT r.sid,
               string_agg(substr(int8send(e.edge), 9 - b.i, 1), ''::bytea
                          ORDER BY r.k, e.o, b.i) AS ranges
        FROM spans AS r
        CROSS JOIN LATERAL (VALUES (1, r.lo), (2, r.hi)) AS e(o, edge)
        CROSS JOIN generate_series(1, 8) AS b(i)
        GROUP BY r.sid
    ), touched AS (
        SELECT cand.*, packed.ranges AS changed_ranges
        FROM cand JOIN packed ON packed.sid = cand.id
    ), moved AS (
        UPDATE sessions SET source_watermark = v_seq + 1
        WHERE sessions.id IN (SELECT touched.id FROM touched)
    ), logged AS (
        INSERT INTO session_changes (session_id, change_seq, prev_seq, ranges)
        SELECT touched.id, v_seq + 1, touched.source_watermark, touched.changed_ranges
        FROM touched
    ), stale AS (
        UPDATE telemetry_cache SET stale_since_ms = p_now_ms
        WHERE telemetry_cache.session_id IN (SELECT touched.id FROM touched)
          AND telemetry_cache.stale_since_ms IS NULL
    ), request AS (
        INSERT INTO ingest_requests
            (user_id, request_id, body_sha256, status_code, response, created_at_ms)
        SELECT p_user_id, p_request_id, p_body_sha256, p_status,
               p_response_head || convert_to((v_seq + 1)::text || '}', 'UTF8'), p_now_ms
        WHERE p_request_id IS NOT NULL AND (SELECT got.n FROM got) = cardinality(p_sources)
    )
    SELECT true, v_seq, true, got.n = cardinality(p_sources) AND p_complete,
           got.sources, got.record_ids,
           s.id::text, s.user_id::text, s.client_session_id::text, s.status::text,
           s.start_ms, s.end_ms, s.notes::text, s.source_watermark, s.archived_at_ms,
           views.windows, views.resolutions, views.versions,
           NULL::text, NULL::integer, NULL::bytea
    FROM got
    LEFT JOIN touched AS s ON true
    LEFT JOIN LATERAL (
        SELECT array_agg(c.window_minutes) AS windows,
               array_agg(c.resolution::text) AS resolutions,
               array_agg(c.compute_version) AS versions
        FROM telemetry_cache AS c WHERE c.session_id = s.id
    ) AS views ON s.id IS NOT NULL;
END
$fn$
"""

SIGNATURE = (
    "vitalcast_ingest_new(text, text[], text[], text[], float8[], text[], bigint[], bigint[], "
    "text[], boolean, boolean, bigint, bigint, bigint, text, text, integer, bytea)"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
