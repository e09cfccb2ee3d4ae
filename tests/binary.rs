//! The `linkhit` binary itself: configuration from the environment, the generated admin token, and a
//! graceful exit 0 on SIGTERM/SIGINT.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "linkhit did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "linkhit did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_sigint_exit_zero_and_a_generated_token_is_printed_once() {
    for signal in ["TERM", "INT"] {
        let port = common::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_linkhit"))
            .env("LINKHIT_LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("LINKHIT_ADMIN_TOKEN")
            .env_remove("LINKHIT_REDIS_URL")
            .env("LINKHIT_JOURNAL_DIR", common::temp_dir("binary-journal"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_healthy(port);
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let token = line.trim().rsplit(' ').next().unwrap().to_owned();
        assert!(line.contains("generated admin token") && token.starts_with("lha_"), "{line}");

        // The printed token works.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let status = rt.block_on(async {
            common::client()
                .post(format!("http://127.0.0.1:{port}/api/v1/workspaces"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"name": "x"}))
                .send()
                .await
                .unwrap()
                .status()
        });
        assert_eq!(status, 201);

        common::signal(child.id(), signal);
        let status = wait_exit(&mut child);
        assert_eq!(status.code(), Some(0), "SIG{signal} must exit 0");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        assert!(!rest.contains(&token), "the token is printed only once");
    }
}

#[test]
fn invalid_configuration_is_refused_with_a_clear_message() {
    let cases = [
        ("LINKHIT_LISTEN", "not-an-address"),
        ("LINKHIT_BASE_URL", "ftp://x"),
        ("LINKHIT_WEBHOOK_RETRY_SCHEDULE", "1,soon"),
        ("LINKHIT_CODE_LENGTH", "3"),
        ("LINKHIT_CODE_LENGTH", "eight"),
        ("LINKHIT_ADMIN_TOKEN", "short"),
        ("LINKHIT_LOG_FORMAT", "yaml"),
        ("LINKHIT_REDIS_URL", "htp://localhost:6379"),
        ("LINKHIT_REDIS_URL", "redis://"),
        ("LINKHIT_ADMIN_LISTEN", "metrics-port"),
        ("LINKHIT_CLICK_HOLD", "-1"),
    ];
    for (var, value) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_linkhit"))
            .env(var, value)
            .env("LINKHIT_JOURNAL_DIR", common::temp_dir("invalid-config"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}: every invalid setting exits 2");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}={value}: the message names the variable the README documents: {stderr}");
    }
}

#[test]
fn json_logs_on_request() {
    let port = common::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_linkhit"))
        .env("LINKHIT_LISTEN", format!("127.0.0.1:{port}"))
        .env("LINKHIT_ADMIN_TOKEN", common::ADMIN)
        .env("LINKHIT_LOG_FORMAT", "json")
        .env_remove("LINKHIT_REDIS_URL")
        .env("LINKHIT_JOURNAL_DIR", common::temp_dir("json-logs"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(port);
    common::signal(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert!(lines.iter().any(|l| l["message"] == "linkhit serving" && l["level"] == "INFO"), "{stderr}");
}
