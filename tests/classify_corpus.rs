//! The classifier against a corpus of real user agents (`tests/data/user_agents.tsv`: class, group,
//! user agent), and the `linkhit classify` subcommand.

use std::io::Write;
use std::process::{Command, Stdio};

use linkhit::click::classify::{Rules, Signals};
use linkhit::model::Class;

const CORPUS: &str = include_str!("data/user_agents.tsv");

fn corpus() -> Vec<(Class, &'static str, &'static str)> {
    CORPUS
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let class = match parts.next().unwrap() {
                "human" => Class::Human,
                "bot" => Class::Bot,
                other => panic!("bad class {other}"),
            };
            (class, parts.next().unwrap(), parts.next().unwrap())
        })
        .collect()
}

#[test]
fn every_corpus_user_agent_gets_its_class() {
    let rules = Rules::builtin();
    let rows = corpus();
    assert!(rows.len() >= 300, "the corpus must hold at least 300 user agents");
    assert!(rows.iter().filter(|r| r.0 == Class::Human).count() >= 100);
    assert!(rows.iter().filter(|r| r.0 == Class::Bot).count() >= 100);
    let wrong: Vec<String> = rows
        .iter()
        .filter_map(|(class, group, ua)| {
            let verdict = rules.classify(Signals { user_agent: Some(ua), ..Default::default() });
            (verdict.class != *class)
                .then(|| format!("{group}: expected {class:?}, got {:?} ({}) for {ua}", verdict.class, verdict.reason))
        })
        .collect();
    assert!(wrong.is_empty(), "{} misclassified:\n{}", wrong.len(), wrong.join("\n"));
}

#[test]
fn bot_reasons_name_the_kind_of_bot() {
    let rules = Rules::builtin();
    for (class, group, ua) in corpus() {
        let reason = rules.classify_user_agent(ua).reason;
        assert!(!reason.is_empty());
        if class == Class::Bot && matches!(group, "library" | "headless") {
            assert!(
                reason.starts_with(group)
                    || reason.starts_with("crawler:")
                    || reason.contains("bot")
                    || reason.contains("user_agent"),
                "{ua}: reason {reason}"
            );
        }
        if class == Class::Human && group == "inapp" {
            assert!(reason.starts_with("inapp:") || reason.starts_with("browser:"), "{ua}: reason {reason}");
        }
    }
}

#[test]
fn classify_subcommand_prints_one_json_verdict_per_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_linkhit"))
        .arg("classify")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"WhatsApp/2.23.20.0 A\nMozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1\n\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["class"], "bot");
    assert_eq!(lines[0]["reason"], "preview:whatsapp");
    assert_eq!(lines[1]["class"], "human");
    assert_eq!(lines[2]["reason"], "empty_user_agent");
}

#[test]
fn classify_subcommand_explains_json_hits_with_network_and_timing() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_linkhit"))
        .arg("classify")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    let lines = [
        serde_json::json!({"user_agent": iphone, "ip": "3.5.0.9", "seconds_since_send": 3600}),
        serde_json::json!({"user_agent": iphone, "ip": "198.51.100.7", "seconds_since_send": 2}),
        serde_json::json!({"user_agent": iphone, "ip": "198.51.100.7", "seconds_since_send": 600, "seconds_since_delivery": 1}),
        serde_json::json!({"user_agent": iphone, "ip": "198.51.100.7", "seconds_since_send": 600}),
    ];
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let got: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let verdicts: Vec<(&str, &str)> =
        got.iter().map(|v| (v["class"].as_str().unwrap(), v["reason"].as_str().unwrap())).collect();
    assert_eq!(
        verdicts,
        [
            ("bot", "network:hosting:aws"),
            ("bot", "timing:2s_after_send"),
            ("bot", "timing:1s_after_delivery"),
            ("human", "browser:Safari")
        ]
    );
    assert_eq!(got[0]["signals"], serde_json::json!(["network:hosting:aws"]));
}
