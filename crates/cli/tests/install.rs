//! `scripts/install.sh`: the man pages and completions it installs are read by the programs
//! that read them (man-db's `man`, bash, fish, zsh), not only checked for being there. No
//! network and no privilege needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TRACER: &str = env!("CARGO_BIN_EXE_service-traceroute");

/// A scratch prefix, removed when dropped (also when an assertion fails).
struct Prefix(PathBuf);

impl Drop for Prefix {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tool(name: &str) -> Command {
    // Every one of them is installed by scripts/setup.sh: a missing one fails the test.
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success()),
        "{name} is not installed (scripts/setup.sh installs it)"
    );
    Command::new(name)
}

/// man's text with groff's overstrikes (bold `X\bX`, underline `_\bX`) removed, and its
/// justified lines joined with single spaces.
fn plain(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn man(root: &Path, page: &str) -> String {
    let mut c = tool("man");
    c.env("MANPATH", root.join("share/man"))
        .env("MANWIDTH", "100")
        .args(["-P", "cat", page]);
    plain(&ok(c.output().expect("man runs"), &format!("man {page}")))
}

/// What bash's completion offers for `words` (the last one being completed).
fn bash_complete(root: &Path, words: &[&str]) -> Vec<String> {
    let file = root.join("share/bash-completion/completions/service-traceroute");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let n = words.len();
    let script = format!(
        r#"source '{}'
fn=$(complete -p service-traceroute | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
COMP_WORDS=({}); COMP_CWORD={}
"$fn" service-traceroute '{}' '{}'
printf '%s\n' "${{COMPREPLY[@]}}""#,
        file.display(),
        quoted.join(" "),
        n - 1,
        words[n - 1],
        words[n - 2],
    );
    let out = ok(
        tool("bash")
            .args(["-c", &script])
            .output()
            .expect("bash runs"),
        "bash completion",
    );
    out.lines().map(str::to_owned).collect()
}

#[test]
fn install_puts_man_pages_and_completions_where_their_readers_find_them() {
    let root = Prefix(std::env::temp_dir().join(format!("svctr-install-{}", std::process::id())));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install.sh");
    let out = Command::new(&script)
        .args([
            "--prefix",
            root.0.to_str().unwrap(),
            "--binary",
            TRACER,
            "--systemd",
        ])
        .output()
        .expect("install.sh runs");
    let said = ok(out, "install.sh");
    assert!(said.contains("man pages"), "{said}");
    let root = &root.0;
    assert!(root.join("bin/service-traceroute").is_file());

    // The main page lists every subcommand's page; each subcommand has its own, with its
    // description and its options.
    let main = man(root, "service-traceroute");
    assert!(
        main.contains("Shows the network path that a live application"),
        "{main}"
    );
    for sub in [
        "flow",
        "trace",
        "compare",
        "monitor",
        "services",
        "reverse",
        "reverse-server",
    ] {
        assert!(
            main.contains(&format!("service-traceroute-{sub}(1)")),
            "{sub}: {main}"
        );
    }
    let trace = man(root, "service-traceroute-trace");
    assert!(
        trace.contains("Classic, Paris or Dublin traceroute"),
        "{trace}"
    );
    for opt in ["--receive", "--max-missing", "--strategy", "--format"] {
        assert!(trace.contains(opt), "{opt}: {trace}");
    }
    let flow = man(root, "service-traceroute-flow");
    assert!(
        flow.contains("--iface") && flow.contains("--remote"),
        "{flow}"
    );

    // bash: subcommands, then a subcommand's options, then an option's values.
    assert_eq!(
        bash_complete(root, &["service-traceroute", "tr"]),
        ["trace"]
    );
    assert_eq!(
        bash_complete(root, &["service-traceroute", "trace", "--rec"]),
        ["--receive"]
    );
    let flow_opts = bash_complete(root, &["service-traceroute", "flow", "--rem"]);
    assert_eq!(flow_opts, ["--remote"]);
    let values = bash_complete(root, &["service-traceroute", "trace", "--receive", ""]);
    for v in ["auto", "raw", "pcap"] {
        assert!(values.iter().any(|x| x == v), "{v}: {values:?}");
    }

    // fish: the same questions through fish's own `complete -C`.
    let fish_file = root.join("share/fish/vendor_completions.d/service-traceroute.fish");
    let ask = |line: &str| -> Vec<String> {
        let cmd = format!("source '{}'; complete -C '{line}'", fish_file.display());
        let out = ok(
            tool("fish").args(["-c", &cmd]).output().expect("fish runs"),
            "fish",
        );
        out.lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(ask("service-traceroute tr"), ["trace"]);
    assert_eq!(ask("service-traceroute trace --rec"), ["--receive"]);

    // systemd: each unit of dist/ runs the installed binary, and systemd's own checker
    // accepts it (directives, the command's path; as an instance, the way it is enabled).
    let units = root.join("lib/systemd/system");
    for name in [
        "service-traceroute-monitor@.service",
        "service-traceroute-reverse@.service",
    ] {
        let text = std::fs::read_to_string(units.join(name)).expect("unit installed");
        let exec = format!("ExecStart={}/bin/service-traceroute ", root.display());
        assert!(text.contains(&exec), "{name}: {text}");
        let instance = name.replace("@.", "@eth0.");
        let out = tool("systemd-analyze")
            .current_dir(&units)
            .args(["verify", "--man=no", &format!("./{instance}")])
            .output()
            .expect("systemd-analyze runs");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
    }

    // zsh: the function is found on the fpath and registered for the command by compinit
    // (zsh completes only in an interactive line editor, so this is as far as a script goes).
    let zsh = format!(
        "fpath=('{}' $fpath); autoload -Uz compinit; compinit -u -D; print -r -- ${{_comps[service-traceroute]}}",
        root.join("share/zsh/site-functions").display()
    );
    let out = ok(
        tool("zsh").args(["-c", &zsh]).output().expect("zsh runs"),
        "zsh",
    );
    assert_eq!(out.trim(), "_service-traceroute");
}

#[test]
fn install_refuses_bad_arguments_in_one_line() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install.sh");
    let out = Command::new(&script).arg("--bogus").output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown argument --bogus"), "{err}");
    let out = Command::new(&script)
        .args([
            "--binary",
            "/nonexistent/service-traceroute",
            "--prefix",
            "/nonexistent",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an executable"));
}
