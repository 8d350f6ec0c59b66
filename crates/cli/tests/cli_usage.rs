//! The command line's own behaviour, no network needed: help that lists the values an option
//! takes and says what each format prints, `services` output, usage errors in one line.

use std::process::{Command, Output};

const TRACER: &str = env!("CARGO_BIN_EXE_service-traceroute");

fn run(args: &[&str]) -> Output {
    Command::new(TRACER).args(args).output().expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn help_lists_the_values_of_algorithm_per_and_strategy() {
    let flow = stdout(&run(&["flow", "--help"]));
    for v in ["concurrent", "hop-by-hop", "packet-by-packet"] {
        assert!(flow.contains(v), "flow --help lists {v}: {flow}");
    }
    let monitor = stdout(&run(&["monitor", "--help"]));
    for v in ["flow", "destination-port", "destination"] {
        assert!(monitor.contains(v), "monitor --help lists {v}");
    }
    let trace = stdout(&run(&["trace", "--help"]));
    for v in [
        "classic",
        "paris",
        "dublin",
        "--max-ttl",
        "--probes",
        "--timeout",
        "--first-ttl",
    ] {
        assert!(trace.contains(v), "trace --help shows {v}");
    }
    assert!(
        flow.contains("-m, --max-ttl") && flow.contains("-q, --probes"),
        "{flow}"
    );
}

#[test]
fn format_help_says_what_each_command_prints() {
    let services = stdout(&run(&["services", "--help"]));
    assert!(
        services.contains("one JSON array of services"),
        "{services}"
    );
    assert!(services.contains("a service each"), "{services}");
    assert!(!services.contains("per flow"), "{services}");
    let compare = stdout(&run(&["compare", "--help"]));
    assert!(
        compare.contains("the comparison with both traces"),
        "{compare}"
    );
    assert!(!compare.contains("jsonl"), "{compare}");
}

#[test]
fn services_jsonl_prints_a_line_per_service() {
    let o = run(&["services", "--format", "jsonl"]);
    assert!(o.status.success());
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 10, "{text}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON object per line");
        assert!(v["name"].is_string(), "{l}");
    }
    let all: serde_json::Value =
        serde_json::from_slice(&run(&["services", "--format", "json"]).stdout).expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(lines.len()));
}

#[test]
fn compare_needs_tcp_or_udp_and_says_so() {
    let o = run(&["compare", "-i", "lo", "--remote", "192.0.2.1:80"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--tcp") && err.contains("--udp"), "{err}");
}

#[test]
fn zero_for_counts_that_need_one_is_refused() {
    for args in [
        vec!["trace", "-N", "0", "192.0.2.1"],
        vec!["trace", "--parallel", "0", "192.0.2.1"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}

/// `--multipath`'s options: a clear one-line refusal for what cannot work together, before
/// any privilege is needed.
#[test]
fn multipath_usage_errors_are_one_line() {
    for (args, says) in [
        (
            &["trace", "--multipath", "-q", "5", "192.0.2.1"][..],
            "cannot be used with",
        ),
        (
            &["trace", "--confidence", "0.9", "192.0.2.1"][..],
            "--multipath",
        ),
        (
            &["trace", "--multipath", "--confidence", "1", "192.0.2.1"][..],
            "between 0 and 1",
        ),
        (
            &["trace", "--multipath", "--max-probes", "0", "192.0.2.1"][..],
            "--max-probes",
        ),
        (
            &["trace", "--multipath", "192.0.2.1", "60"][..],
            "packet length",
        ),
        (
            &[
                "compare",
                "--tcp",
                "-i",
                "lo",
                "--remote",
                "192.0.2.1:80",
                "--format",
                "dot",
            ][..],
            "need --multipath",
        ),
        (
            &[
                "compare",
                "--multipath",
                "--fresh",
                "2",
                "--tcp",
                "-i",
                "lo",
                "--remote",
                "192.0.2.1:80",
            ][..],
            "cannot be used with",
        ),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err}"
        );
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let help = stdout(&run(&["trace", "--help"]));
    for s in [
        "--multipath",
        "--confidence",
        "--max-probes",
        "Graphviz",
        "svg",
    ] {
        assert!(help.contains(s), "trace --help shows {s}");
    }
}

/// `reverse` and `reverse-server` refuse bad input in one line with exit 2, before anything
/// is sent: an unknown interface, an allowlist with a bad line (file and line named), rates
/// that are not positive, an empty TTL range, an address of the other family.
#[test]
fn reverse_bad_input_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("svctr-allow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("allowed.txt");
    std::fs::write(&bad, "# clients\n198.18.0.0/15\n198.18.0.1/24\n").unwrap();
    let bad_path = bad.to_string_lossy().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "reverse-server",
                "--iface",
                "no-such-if0",
                "--allow-from",
                &bad_path,
            ],
            "line 3",
        ),
        (
            vec!["reverse-server", "--iface", "no-such-if0"],
            "no-such-if0",
        ),
        (
            vec!["reverse-server", "--iface", "lo", "--rate", "0"],
            "--rate must be a positive number",
        ),
        (
            vec!["reverse-server", "--iface", "lo", "--indirect"],
            "--allow-indirect-from",
        ),
        (
            vec!["reverse", "-f", "9", "-m", "3", "198.18.0.1"],
            "-f 9 is above -m 3",
        ),
        (
            vec!["reverse", "-4", "2001:2::1"],
            "is an IPv6 address but -4 was given",
        ),
    ];
    for (args, want) in cases {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The formats other tools read and the files a run takes or writes: combinations that
/// cannot work and bad files are refused in one line with exit 2, before anything is sent.
#[test]
fn format_and_file_usage_errors_are_one_line() {
    let dir = std::env::temp_dir().join(format!("svctr-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let gz = file("ip2asn-v4.tsv.gz", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    let bad = file(
        "bad.tsv",
        b"1.0.0.0\t1.0.0.255\t13335\tUS\tX\n1.0.1.0\t1.0.1.255\tAS1\n",
    );
    let empty = file("empty.tsv", b"\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["trace", "--multipath", "--format", "atlas", "192.0.2.1"],
            "takes no --multipath",
        ),
        (
            vec!["reverse", "--format", "warts", "192.0.2.1"],
            "a warts trace object has no way back",
        ),
        (
            vec![
                "monitor",
                "-i",
                "lo",
                "--cidr",
                "192.0.2.0/24",
                "--multipath",
                "--format",
                "warts",
            ],
            "--format warts takes no --multipath",
        ),
        (
            vec!["trace", "--pcap", "x.pcap", "--receive", "raw", "192.0.2.1"],
            "--pcap needs a capture",
        ),
        (
            vec!["trace", "--asn", "/nonexistent/ip2asn.tsv", "192.0.2.1"],
            "cannot read",
        ),
        (vec!["trace", "--asn", &gz, "192.0.2.1"], "gunzip it first"),
        (
            vec!["trace", "--asn", &bad, "192.0.2.1"],
            "line 2: AS number",
        ),
        (vec!["trace", "--asn", &empty, "192.0.2.1"], "no ranges"),
        (vec!["trace", "-A", "192.0.2.1"], "--asn FILE"),
        (
            vec![
                "flow",
                "-i",
                "lo",
                "--tcp",
                "--remote",
                "192.0.2.1:80",
                "--asn",
                &bad,
            ],
            "line 2:",
        ),
        (
            vec![
                "monitor",
                "-i",
                "lo",
                "--cidr",
                "192.0.2.0/24",
                "--multipath",
                "--format",
                "replies",
            ],
            "--format replies takes no --multipath",
        ),
        (
            vec![
                "flow",
                "-i",
                "lo",
                "--tcp",
                "--remote",
                "192.0.2.1:80",
                "--reverse",
                "--format",
                "atlas",
            ],
            "--format atlas takes no --reverse",
        ),
    ];
    for (args, says) in cases {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err}"
        );
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
