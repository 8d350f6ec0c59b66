-- Flows whose path differs from a fresh flow's: per vantage point, service and destination
-- (protocol, address, port), the flow traced last is the fresh one; every other flow whose
-- own latest trace took another path is listed beside it. These are the flows a load
-- balancer or a route change put elsewhere than a new connection would go now.
WITH
    latest AS
    (
        SELECT
            vantage,
            ifNull(service, '') AS svc,
            probe_protocol,
            probe_dst_addr,
            ifNull(probe_dst_port, 0) AS dst_port,
            probe_src_addr,
            ifNull(probe_src_port, 0) AS src_port,
            argMax(path, (trace_start, trace_id)) AS flow_path,
            max(trace_start) AS traced
        FROM trace_paths
        GROUP BY vantage, svc, probe_protocol, probe_dst_addr, dst_port, probe_src_addr, src_port
    ),
    fresh AS
    (
        SELECT
            vantage, svc, probe_protocol, probe_dst_addr, dst_port,
            argMax(src_port, traced) AS fresh_src_port,
            argMax(flow_path, traced) AS fresh_path,
            max(traced) AS fresh_traced
        FROM latest
        GROUP BY vantage, svc, probe_protocol, probe_dst_addr, dst_port
    )
SELECT
    l.vantage AS vantage,
    l.svc AS service,
    l.probe_protocol AS protocol,
    replaceRegexpOne(toString(l.probe_dst_addr), '^::ffff:', '') AS destination,
    l.dst_port AS destination_port,
    l.src_port AS source_port,
    l.flow_path AS path,
    f.fresh_src_port AS fresh_source_port,
    f.fresh_path AS fresh_path
FROM latest AS l
INNER JOIN fresh AS f USING (vantage, svc, probe_protocol, probe_dst_addr, dst_port)
WHERE l.flow_path != f.fresh_path
ORDER BY vantage, service, destination, destination_port, source_port;
