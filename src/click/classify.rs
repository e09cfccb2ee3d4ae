//! Stage 3 of a click's journey: is this hit a human or a bot, and why.
//!
//! Pure and explainable: every [`Verdict`] carries a `reason` (`preview:whatsapp`, `library:curl`,
//! `browser:Safari`, `head_request`…). The order of evidence, first match wins:
//!
//! 1. request signals: `HEAD` (`head_request`), `Purpose`/`Sec-Purpose`/`X-Purpose`/`X-Moz: prefetch`
//!    (`prefetch`);
//! 2. no user agent (`empty_user_agent`);
//! 3. the operator's extra human patterns, then extra bot patterns (`operator:human`, `operator:bot`);
//! 4. linkhit's rule file `rules.txt` (link previews of messaging apps, scanners, monitors, HTTP libraries,
//!    headless browsers, in-app browsers of social apps);
//! 5. a user agent too short or shapeless to be a browser (`garbage_user_agent`);
//! 6. woothee's crawler list (`crawler:<name>`);
//! 7. the `isbot` crate's maintained pattern list (`known_bot_pattern`);
//! 8. woothee's browsers are humans (`browser:<name>`); anything else is a bot
//!    (`unrecognized_user_agent`), except Mozilla-shaped agents from a real engine, which get the benefit
//!    of the doubt (`browser:unrecognized`).
//!
//! Parsing a user agent costs microseconds, so verdicts are memoised by user agent ([`Classifier`]); user
//! agents repeat massively in real traffic.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::Class;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// linkhit's own rules, embedded at build time.
pub const BUILTIN_RULES: &str = include_str!("rules.txt");

/// Longest user agent kept and classified; anything longer is truncated first.
pub const MAX_USER_AGENT: usize = 512;

/// A classification and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub class: Class,
    pub reason: Arc<str>,
}

impl Verdict {
    fn new(class: Class, reason: &str) -> Self {
        Self { class, reason: Arc::from(reason) }
    }
    pub fn is_human(&self) -> bool {
        self.class == Class::Human
    }
}

/// The request facts classification looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals<'a> {
    pub user_agent: Option<&'a str>,
    pub head: bool,
    pub prefetch: bool,
}

/// Why a rule set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("rules line {line}: {problem}")]
    Syntax { line: usize, problem: String },
    #[error("cannot compile user-agent rules: {0}")]
    Compile(String),
}

/// A compiled substring rule set: first listed match wins.
struct RuleSet {
    matcher: Option<AhoCorasick>,
    verdicts: Vec<Verdict>,
}

impl RuleSet {
    fn new(rules: Vec<(String, Verdict)>) -> Result<Self, RulesError> {
        if rules.is_empty() {
            return Ok(Self { matcher: None, verdicts: Vec::new() });
        }
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(rules.iter().map(|(p, _)| p.as_str()))
            .map_err(|e| RulesError::Compile(e.to_string()))?;
        Ok(Self { matcher: Some(matcher), verdicts: rules.into_iter().map(|(_, v)| v).collect() })
    }

    fn first_match(&self, ua: &str) -> Option<&Verdict> {
        let matcher = self.matcher.as_ref()?;
        matcher.find_overlapping_iter(ua).map(|m| m.pattern().as_usize()).min().map(|i| &self.verdicts[i])
    }
}

/// Parses the rule file format: `<human|bot> TAB <reason> TAB <substring>`, `#` comments.
pub fn parse_rules(text: &str) -> Result<Vec<(String, Verdict)>, RulesError> {
    let mut rules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (Some(class), Some(reason), Some(pattern)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(RulesError::Syntax { line: n + 1, problem: "expected `class<TAB>reason<TAB>pattern`".into() });
        };
        let class = match class {
            "human" => Class::Human,
            "bot" => Class::Bot,
            other => {
                return Err(RulesError::Syntax {
                    line: n + 1,
                    problem: format!("class must be human or bot, not `{other}`"),
                });
            }
        };
        if pattern.trim().is_empty() {
            return Err(RulesError::Syntax { line: n + 1, problem: "empty pattern".into() });
        }
        rules.push((pattern.to_owned(), Verdict::new(class, reason)));
    }
    Ok(rules)
}

/// Operator pattern files: one case-insensitive substring per line, `#` comments.
pub fn parse_patterns(text: &str, class: Class) -> Vec<(String, Verdict)> {
    let reason = match class {
        Class::Human => "operator:human",
        Class::Bot => "operator:bot",
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|p| (p.to_owned(), Verdict::new(class, reason)))
        .collect()
}

/// The user-agent rules, without memory. Cheap to share.
pub struct Rules {
    operator: RuleSet,
    builtin: RuleSet,
    isbot: isbot::Bots,
    woothee: woothee::parser::Parser,
}

impl Rules {
    /// The built-in rules plus the operator's extra patterns (both may be empty).
    pub fn new(extra_human: &str, extra_bot: &str) -> Result<Self, RulesError> {
        let mut operator = parse_patterns(extra_human, Class::Human);
        operator.extend(parse_patterns(extra_bot, Class::Bot));
        Ok(Self {
            operator: RuleSet::new(operator)?,
            builtin: RuleSet::new(parse_rules(BUILTIN_RULES)?)?,
            isbot: isbot::Bots::default(),
            woothee: woothee::parser::Parser::new(),
        })
    }

    pub fn builtin() -> Self {
        Self::new("", "").expect("the built-in rules compile")
    }

    /// Classifies one request. Pure: the same signals always give the same verdict.
    pub fn classify(&self, signals: Signals<'_>) -> Verdict {
        if signals.head {
            return Verdict::new(Class::Bot, "head_request");
        }
        if signals.prefetch {
            return Verdict::new(Class::Bot, "prefetch");
        }
        match signals.user_agent.map(str::trim) {
            None | Some("") => Verdict::new(Class::Bot, "empty_user_agent"),
            Some(ua) => self.classify_user_agent(ua),
        }
    }

    /// The user-agent part of [`Rules::classify`].
    pub fn classify_user_agent(&self, ua: &str) -> Verdict {
        let ua = truncate(ua.trim(), MAX_USER_AGENT);
        if ua.is_empty() {
            return Verdict::new(Class::Bot, "empty_user_agent");
        }
        if let Some(v) = self.operator.first_match(ua).or_else(|| self.builtin.first_match(ua)) {
            return v.clone();
        }
        if looks_like_garbage(ua) {
            return Verdict::new(Class::Bot, "garbage_user_agent");
        }
        let parsed = self.woothee.parse(ua);
        if let Some(r) = &parsed
            && r.category == "crawler"
        {
            return Verdict::new(Class::Bot, &format!("crawler:{}", r.name));
        }
        if self.isbot.is_bot(ua) {
            return Verdict::new(Class::Bot, "known_bot_pattern");
        }
        match parsed {
            Some(r)
                if matches!(r.category, "pc" | "smartphone" | "mobilephone" | "appliance")
                    && r.name != woothee::woothee::VALUE_UNKNOWN =>
            {
                Verdict::new(Class::Human, &format!("browser:{}", r.name))
            }
            _ if is_mozilla_shaped(ua) => Verdict::new(Class::Human, "browser:unrecognized"),
            _ => Verdict::new(Class::Bot, "unrecognized_user_agent"),
        }
    }
}

/// Too short, or no product token at all: no browser sends this.
fn looks_like_garbage(ua: &str) -> bool {
    ua.len() < 16 || !ua.contains('/') || !ua.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `Mozilla/5.0 (…) AppleWebKit/… ` or `… Gecko/…`: the shape every real browser engine sends.
fn is_mozilla_shaped(ua: &str) -> bool {
    ua.starts_with("Mozilla/5.0 (") && (ua.contains("AppleWebKit/") || ua.contains("Gecko/"))
}

/// A user agent cut to [`MAX_USER_AGENT`] bytes (at a character boundary), as stored with a click.
pub fn truncated(ua: &str) -> &str {
    truncate(ua, MAX_USER_AGENT)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// [`Rules`] with a bounded memo of user-agent verdicts. Owned by the single pipeline task, so the memo
/// needs no lock.
pub struct Classifier {
    rules: Arc<Rules>,
    /// Keyed with foldhash (seeded per process): hashing each hit's user agent with SipHash cost more
    /// than the memo lookup itself; the memo is bounded and cleared, so a flood of distinct agents
    /// only costs classification time.
    memo: HashMap<Arc<str>, Verdict, foldhash::fast::RandomState>,
    capacity: usize,
}

impl Classifier {
    pub fn new(rules: Arc<Rules>, capacity: usize) -> Self {
        Self { rules, memo: HashMap::default(), capacity: capacity.max(1) }
    }

    pub fn classify(&mut self, signals: Signals<'_>) -> Verdict {
        self.classify_hit(signals).0
    }

    /// [`Self::classify`], and the user agent as a click keeps it ([`truncated`]): shared with the memo's
    /// key, so the hits of a known agent copy no text.
    pub fn classify_hit(&mut self, signals: Signals<'_>) -> (Verdict, Option<Arc<str>>) {
        let Some(ua) = signals.user_agent else {
            return (self.rules.classify(signals), None);
        };
        // Request signals decide before the user agent; they are not memoised. Nor are agents longer than
        // what a click keeps: two of them may share the kept prefix and not the verdict (the rules trim
        // the whole agent before cutting it).
        if signals.head || signals.prefetch || ua.len() > MAX_USER_AGENT {
            let text = match self.memo.get_key_value(truncated(ua)) {
                Some((text, _)) => Arc::clone(text),
                None => Arc::from(truncated(ua)),
            };
            return (self.rules.classify(signals), Some(text));
        }
        if let Some((text, v)) = self.memo.get_key_value(ua) {
            return (v.clone(), Some(Arc::clone(text)));
        }
        let text: Arc<str> = Arc::from(ua);
        let verdict = self.rules.classify_user_agent(ua);
        if self.memo.len() >= self.capacity {
            // Clearing beats an LRU here: real traffic has a small hot set of user agents that
            // refills in a moment, and this keeps the memo a plain map.
            self.memo.clear();
        }
        self.memo.insert(Arc::clone(&text), verdict.clone());
        (verdict, Some(text))
    }

    pub fn memo_len(&self) -> usize {
        self.memo.len()
    }
}

/// Builds the classification rules from the built-in file and the operator's pattern files.
pub fn load_rules(
    extra_human: Option<&std::path::Path>,
    extra_bot: Option<&std::path::Path>,
) -> Result<Rules, RulesError> {
    let read = |path: Option<&std::path::Path>| -> Result<String, RulesError> {
        match path {
            None => Ok(String::new()),
            Some(p) => std::fs::read_to_string(p).map_err(|source| RulesError::Read { path: p.to_owned(), source }),
        }
    };
    Rules::new(&read(extra_human)?, &read(extra_bot)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ua(s: &str) -> Verdict {
        Rules::builtin().classify(Signals { user_agent: Some(s), head: false, prefetch: false })
    }

    #[test]
    fn request_signals_come_first() {
        let rules = Rules::builtin();
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
        let head = rules.classify(Signals { user_agent: Some(iphone), head: true, prefetch: false });
        assert_eq!((head.class, &*head.reason), (Class::Bot, "head_request"));
        let pre = rules.classify(Signals { user_agent: Some(iphone), head: false, prefetch: true });
        assert_eq!((pre.class, &*pre.reason), (Class::Bot, "prefetch"));
        let none = rules.classify(Signals::default());
        assert_eq!((none.class, &*none.reason), (Class::Bot, "empty_user_agent"));
        assert_eq!(ua(iphone).class, Class::Human);
    }

    #[test]
    fn reasons_table() {
        let cases = [
            ("facebookexternalhit/1.1 Facebot Twitterbot/1.0", Class::Bot, "preview:imessage"),
            (
                "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
                Class::Bot,
                "preview:facebook",
            ),
            ("WhatsApp/2.23.20.0 A", Class::Bot, "preview:whatsapp"),
            ("TelegramBot (like TwitterBot)", Class::Bot, "preview:telegram"),
            ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", Class::Bot, "preview:slack"),
            ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", Class::Bot, "preview:discord"),
            ("curl/8.5.0", Class::Bot, "library:curl"),
            ("python-requests/2.31.0", Class::Bot, "library:python"),
            ("Go-http-client/1.1", Class::Bot, "library:go"),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
                Class::Bot,
                "headless:chrome",
            ),
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                Class::Bot,
                "crawler:Googlebot",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/21B80 Instagram 309.1.0.41.113",
                Class::Human,
                "inapp:instagram",
            ),
            (
                "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
                Class::Human,
                "browser:Chrome",
            ),
            ("x", Class::Bot, "garbage_user_agent"),
            ("Mozilla/5.0", Class::Bot, "garbage_user_agent"),
        ];
        for (agent, class, reason) in cases {
            let v = ua(agent);
            assert_eq!((v.class, &*v.reason), (class, reason), "{agent}");
        }
    }

    #[test]
    fn operator_patterns_override_builtin_rules() {
        let rules = Rules::new("# our QA team's curl counts\ncurl/7.99-qa\n", "FriendlyCorpBrowser\n").unwrap();
        let v = rules.classify_user_agent("curl/7.99-qa");
        assert_eq!((v.class, &*v.reason), (Class::Human, "operator:human"));
        let v = rules.classify_user_agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 FriendlyCorpBrowser/1");
        assert_eq!((v.class, &*v.reason), (Class::Bot, "operator:bot"));
        assert_eq!(rules.classify_user_agent("curl/8.0").class, Class::Bot);
    }

    #[test]
    fn rule_file_errors_are_reported() {
        assert!(parse_rules("bot\tx").is_err());
        assert!(parse_rules("robot\tx\ty").is_err());
        assert!(parse_rules("bot\tx\t ").is_err());
        assert_eq!(parse_rules("# c\n\nbot\tr\tp\n").unwrap().len(), 1);
        assert!(parse_rules(BUILTIN_RULES).unwrap().len() > 100);
    }

    #[test]
    fn memo_is_bounded_and_consistent() {
        let mut c = Classifier::new(Arc::new(Rules::builtin()), 2);
        for agent in ["curl/8.0 a", "curl/8.0 b", "curl/8.0 c", "curl/8.0 a"] {
            let v = c.classify(Signals { user_agent: Some(agent), ..Default::default() });
            assert_eq!(&*v.reason, "library:curl");
            assert!(c.memo_len() <= 2);
        }
    }

    /// An agent longer than what a click keeps is judged whole, as `Rules` judges it, never from the memo
    /// of another agent with the same kept prefix.
    #[test]
    fn long_user_agents_are_judged_whole_and_not_memoised() {
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 ";
        let pad = |tail: &str| format!("{chrome}{}{tail}", "x".repeat(MAX_USER_AGENT - chrome.len() - 6));
        let mut c = Classifier::new(Arc::new(Rules::builtin()), 100);
        for ua in [pad("abbot extra"), pad("abbot  tail"), pad("ab bot/1.0 more text")] {
            let (verdict, text) = c.classify_hit(Signals { user_agent: Some(&ua), ..Default::default() });
            let whole = Rules::builtin().classify(Signals { user_agent: Some(&ua), ..Default::default() });
            assert_eq!(verdict, whole, "{ua}");
            assert_eq!(text.as_deref(), Some(truncated(&ua)));
        }
        assert_eq!(c.memo_len(), 0, "long agents are not memoised");
    }

    #[test]
    fn long_user_agents_are_truncated_safely() {
        let long = format!("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) {}é", "a".repeat(600));
        let _ = ua(&long);
        assert_eq!(truncate("aé", 2), "a");
    }
}
