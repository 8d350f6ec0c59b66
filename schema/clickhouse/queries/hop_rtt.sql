-- Round-trip times per hop: for each vantage point, service and TTL, every address that
-- answered, its replies and their lower median and maximum RTT (ms). The hops where a
-- service's RTT jumps are where to look when it is slow.
SELECT
    vantage,
    ifNull(service, '') AS svc,
    probe_ttl,
    replaceRegexpOne(toString(assumeNotNull(reply_src_addr)), '^::ffff:', '') AS hop,
    count() AS replies,
    quantileExactLow(0.5)(assumeNotNull(rtt_ms)) AS median_rtt_ms,
    max(assumeNotNull(rtt_ms)) AS max_rtt_ms
FROM replies
WHERE reply_src_addr IS NOT NULL AND rtt_ms IS NOT NULL
GROUP BY vantage, svc, probe_ttl, hop
ORDER BY vantage, svc, probe_ttl, hop;
