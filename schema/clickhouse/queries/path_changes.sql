-- Path changes per service and hour: a trace whose path differs from the previous trace to
-- the same destination of the same service (vantage point, protocol, remote address and
-- port), the rule of `monitor --metrics-listen`'s path_changes_total. Flows that a load
-- balancer spreads over several paths count as changes too: that is the service's path
-- changing as its users see it (differs_from_fresh.sql lists which flows go where). A hop
-- that answered in one trace and not in the other (`*`) counts as a change.
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
            PARTITION BY vantage, svc, probe_protocol, probe_dst_addr, ifNull(probe_dst_port, 0)
            ORDER BY trace_start, trace_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS previous
    FROM trace_paths
)
GROUP BY service, hour
ORDER BY hour, service;
