-- The ClickHouse table of `--format replies` lines: one row per probe, answered or not.
-- Every vantage point's monitors append to the same table (see docs/deployment.md); load
-- lines with
--   clickhouse-client --date_time_input_format=best_effort \
--     --query 'INSERT INTO replies FORMAT JSONEachRow' < replies.jsonl
-- (best_effort: the times are RFC 3339, `2026-12-05T17:23:04.821693Z`).
--
-- Addresses of both families share one column: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d),
-- as ClickHouse's IPv6 type does with an IPv4 string, and as Diamond-Miner's tables do.
-- Columns are named as the JSON fields (schema/record.schema.json, record_type "reply").
CREATE TABLE IF NOT EXISTS replies
(
    schema_version    UInt16,
    record_type       LowCardinality(String),
    record_id         UUID,
    tool              LowCardinality(String),
    tool_version      LowCardinality(String),
    vantage           LowCardinality(String),
    trace_id          UUID,
    trace_type        LowCardinality(String),
    trace_start       DateTime64(6, 'UTC'),
    trace_stop_reason LowCardinality(String),
    service           LowCardinality(Nullable(String)),
    server_name       Nullable(String),
    probe_protocol    LowCardinality(String),
    probe_src_addr    IPv6,
    probe_src_port    Nullable(UInt16),
    probe_dst_addr    IPv6,
    probe_dst_port    Nullable(UInt16),
    probe_ttl         UInt8,
    probe_index       UInt16,
    probe_flow        Nullable(UInt16),
    probe_tag         UInt16,
    probe_error       Nullable(String),
    reply_src_addr    Nullable(IPv6),
    reply_asn         Nullable(UInt32),
    rtt_ms            Nullable(Float64),
    reply_icmp_type   Nullable(UInt8),
    reply_icmp_code   Nullable(UInt8),
    reply_ttl         Nullable(UInt8),
    quoted_ttl        Nullable(UInt8),
    reply_tcp_flags   Nullable(UInt8),
    reply_mpls_labels Array(UInt32),
    reply_mtu         Nullable(UInt32)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(trace_start)
-- A trace's rows together, and a vantage point's traces to one destination in time order:
-- what the path queries read.
ORDER BY (vantage, probe_dst_addr, trace_start, trace_id, probe_ttl, probe_index);

-- One row per trace: its flow, and its path as text, one field per TTL in TTL order, each
-- the addresses that answered at that TTL (sorted, `|` between several) or `*` for none.
-- Two traces took the same path when their `path` is equal.
CREATE VIEW IF NOT EXISTS trace_paths AS
SELECT
    vantage,
    trace_id,
    any(trace_start)       AS trace_start,
    any(trace_type)        AS trace_type,
    any(service)           AS service,
    any(probe_protocol)    AS probe_protocol,
    any(probe_src_addr)    AS probe_src_addr,
    any(probe_src_port)    AS probe_src_port,
    any(probe_dst_addr)    AS probe_dst_addr,
    any(probe_dst_port)    AS probe_dst_port,
    any(trace_stop_reason) AS trace_stop_reason,
    arrayStringConcat(
        arrayMap(h -> if(empty(h.2), '*', arrayStringConcat(h.2, '|')),
                 arraySort(h -> h.1, groupArray((probe_ttl, addrs)))),
        ' ') AS path
FROM
(
    SELECT
        vantage, trace_id, probe_ttl,
        any(trace_start) AS trace_start, any(trace_type) AS trace_type,
        any(service) AS service, any(probe_protocol) AS probe_protocol,
        any(probe_src_addr) AS probe_src_addr, any(probe_src_port) AS probe_src_port,
        any(probe_dst_addr) AS probe_dst_addr, any(probe_dst_port) AS probe_dst_port,
        any(trace_stop_reason) AS trace_stop_reason,
        arraySort(groupUniqArrayIf(replaceRegexpOne(toString(reply_src_addr), '^::ffff:', ''),
                                   reply_src_addr IS NOT NULL)) AS addrs
    FROM replies
    GROUP BY vantage, trace_id, probe_ttl
)
GROUP BY vantage, trace_id;
