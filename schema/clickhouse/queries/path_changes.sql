-- Path changes per service and hour: a trace whose path differs from the previous trace of
-- the same flow (same vantage point, protocol, addresses and ports). A monitor retraces a
-- flow with `--retrace-after` and `--per flow`; `trace` with a fixed `--sport` repeats one.
-- Flows of one service that take different load-balanced branches are not changes: see
-- differs_from_fresh.sql. A hop that answered in one trace and not in the other (`*`)
-- counts as a change.
SELECT
    svc AS service,
    toStartOfHour(trace_start) AS hour,
    count() AS traces,
    countIf(previous != '' AND path != previous) AS path_changes
FROM
(
    SELECT
        ifNull(service, '') AS svc,
        trace_start,
        path,
        lagInFrame(path, 1, '') OVER (
            PARTITION BY vantage, probe_protocol, probe_src_addr, ifNull(probe_src_port, 0),
                         probe_dst_addr, ifNull(probe_dst_port, 0)
            ORDER BY trace_start, trace_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS previous
    FROM trace_paths
)
GROUP BY service, hour
ORDER BY hour, service;
